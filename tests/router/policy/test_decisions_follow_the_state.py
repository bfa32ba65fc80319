"""Decisions read each new view whole: what the router just sent somewhere (its ledger) and what a
snapshot just reported count in the very next decision, whatever the policies remember between
decisions."""

from __future__ import annotations

import random

import pytest

from router.policy.registry import build_policy
from router.state.cluster import ClusterState
from tests.router.helpers import request
from tests.router.state.helpers import descriptor, snapshot


def two_equal_replicas() -> ClusterState:
    state = ClusterState(view_resolution_s=0.0)
    for replica_id in ("r1", "r2"):
        state.register(descriptor(replica_id), now=0.0)
        state.apply_snapshot(snapshot(replica_id, num_waiting=0, waiting_prefill_tokens=0), now=0.0)
    return state


@pytest.mark.parametrize("name", ["sal", "predicted_cost", "dynamo_cost", "lmetric", "least_request"])
def test_what_was_just_routed_counts_in_the_next_decision(name: str) -> None:
    state, policy, rng = two_equal_replicas(), build_policy(name), random.Random(0)
    chosen = []
    for step in range(6):
        decision = policy.decide(request(1000, blocks=0, request_id=f"q{step}"), state.view(0.0), rng)
        assert decision.replica_id is not None and len(decision.scores) == 2 and decision.reason
        chosen.append(decision.replica_id)
        state.record_routed(
            decision.replica_id,
            f"q{step}",
            prompt_tokens=1000,
            uncached_prompt_tokens=1000,
            predicted_decode_tokens=200,
            blocks=95,
            now=0.0,
        )
    # After a request lands on one of two equal replicas, the next goes to the other.
    assert all(chosen[i + 1] != chosen[i] for i in range(0, len(chosen), 2))


LOAD_AWARE = ("least_kv", "queue_depth", "gie_default", "dynamo_cost", "llumnix", "lmetric", "sal")


@pytest.mark.parametrize("name", [*LOAD_AWARE, "predicted_cost"])
def test_a_new_snapshot_counts_in_the_next_decision(name: str) -> None:
    state, policy = two_equal_replicas(), build_policy(name)
    policy.decide(request(2000, blocks=0), state.view(0.0), random.Random(0))
    busy = snapshot(
        "r1",
        seq=2,
        free_blocks=300,
        num_running=64,
        running_context_tokens=64 * 3000,
        num_waiting=20,
        waiting_prefill_tokens=50_000,
    )
    state.apply_snapshot(busy, now=0.0)
    decision = policy.decide(request(2000, blocks=0), state.view(0.0), random.Random(0))
    scores = {s.replica_id: s.total for s in decision.scores}
    assert decision.replica_id == "r2" and scores["r2"] > scores["r1"]
