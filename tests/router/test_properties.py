"""Properties over random fleets: the inlined hot loops agree with the readable reference formulas,
and every named policy returns a well-formed decision."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.routing import LengthEstimate, RoutingRequest
from router.policy.plugins.estimates import kv_fits, matched_blocks
from router.policy.plugins.filter_kv_headroom import KvHeadroomFilter
from router.policy.plugins.score_maps import ratio_scores
from router.policy.plugins.score_predicted_cost import (
    PredictedCostScorer,
    expected_cost_s,
    kv_usage_after,
    output_outcomes,
)
from router.policy.plugins.score_sal import TIME_OFFSET_S, SalScorer, estimated_ttft_s
from router.policy.registry import build_policy, policy_names
from router.policy.view import ClusterView, ReplicaLoad
from tests.router.helpers import DictPrefix, replica, request, view

GPUS = ("h100-80gb", "a100-80gb", "v100-32gb", None)


@st.composite
def replicas(draw: st.DrawFn, index: int) -> ReplicaLoad:
    running = draw(st.integers(0, 64))
    total = draw(st.integers(1, 4000))
    return replica(
        f"r{index}",
        draw(st.sampled_from(GPUS)),
        total_blocks=total,
        free_blocks=draw(st.integers(0, total)),
        block_size=draw(st.sampled_from((16, 32))),
        num_running=running,
        num_waiting=draw(st.integers(0, 8)),
        waiting_prefill_tokens=draw(st.integers(0, 50_000)),
        running_context_tokens=running * draw(st.integers(1, 4000)),
        inflight_requests=draw(st.integers(0, 100)),
        pending_requests=draw(st.integers(0, 3)),
        pending_prefill_tokens=draw(st.integers(0, 8000)),
        pending_blocks=draw(st.integers(0, 300)),
        healthy=draw(st.booleans()) or draw(st.booleans()),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RoutingRequest, ClusterView]:
    count = draw(st.integers(1, 6))
    fleet = [draw(replicas(i)) for i in range(count)]
    prompt = draw(st.integers(1, 6000))
    predicted = draw(
        st.none()
        | st.builds(
            lambda p50, spread: LengthEstimate(p50 * 1.2, p50, p50 * spread),
            st.floats(1, 2000),
            st.floats(1, 5),
        )
    )
    req = request(prompt, max_tokens=draw(st.integers(1, 4096)), predicted=predicted)
    cached = {r.replica_id: range(1, draw(st.integers(0, prompt // 16)) + 1) for r in fleet}
    return req, view(*fleet, prefix=DictPrefix(cached))


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_kv_headroom_filter_matches_kv_fits(scenario: tuple[RoutingRequest, ClusterView]) -> None:
    req, cluster = scenario
    fitting = [r for r in cluster.replicas if kv_fits(req, r, matched_blocks(req, r, cluster))]
    expected = fitting or list(cluster.replicas)
    assert list(KvHeadroomFilter().filter(req, cluster.replicas, cluster)) == expected


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_sal_scores_match_the_reference_formula(scenario: tuple[RoutingRequest, ClusterView]) -> None:
    req, cluster = scenario
    matched = {r.replica_id: matched_blocks(req, r, cluster) for r in cluster.replicas}
    times = {r.replica_id: estimated_ttft_s(req, r, matched[r.replica_id]) for r in cluster.replicas}
    expected = ratio_scores(times, TIME_OFFSET_S)
    fits = {r.replica_id for r in cluster.replicas if kv_fits(req, r, matched[r.replica_id])}
    if fits:
        expected = {rid: score if rid in fits else 0.0 for rid, score in expected.items()}
    assert SalScorer().score(req, cluster.replicas, cluster) == pytest.approx(expected)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_predicted_cost_scores_match_the_reference_formula(
    scenario: tuple[RoutingRequest, ClusterView],
) -> None:
    req, cluster = scenario
    outcomes = output_outcomes(req)
    matched = {r.replica_id: matched_blocks(req, r, cluster) for r in cluster.replicas}
    costs = {r.replica_id: expected_cost_s(req, r, matched[r.replica_id], outcomes) for r in cluster.replicas}
    expected = ratio_scores(costs, 1e-3)
    safe = {r.replica_id for r in cluster.replicas if kv_usage_after(req, r, matched[r.replica_id]) <= 0.9}
    if safe:
        expected = {rid: score if rid in safe else 0.0 for rid, score in expected.items()}
    assert PredictedCostScorer().score(req, cluster.replicas, cluster) == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(scenarios(), st.sampled_from(policy_names()), st.integers(0, 2**32))
def test_every_policy_returns_a_well_formed_decision(
    scenario: tuple[RoutingRequest, ClusterView], name: str, seed: int
) -> None:
    req, cluster = scenario
    decision = build_policy(name).decide(req, cluster, random.Random(seed))
    scored = [s.replica_id for s in decision.scores]
    removed = [rid for rid, _ in decision.filtered_out]
    assert sorted(scored + removed) == sorted(r.replica_id for r in cluster.replicas)
    assert all(0.0 <= s.total <= 1.0 and all(0.0 <= p <= 1.0 for _, p in s.parts) for s in decision.scores)
    if scored:
        assert decision.replica_id in scored and decision.ranked[0] == decision.replica_id
    else:
        assert decision.replica_id is None and decision.reason.startswith("no replica left after filter")
