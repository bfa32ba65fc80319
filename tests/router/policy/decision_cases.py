"""Seeded sequences of cluster views and requests for checking whole decisions, with the edge cases
the policies must keep apart: unhealthy, draining and circuit-open replicas, other models, unknown
hardware, no KV capacity known, over-promised blocks, idle replicas, learned corrections, two block
sizes, cached prefixes, predictions with and without length bins.

Each case is a sequence: after every decision one or two replicas change (a new snapshot, or the
ledger charging the chosen one), so whatever a profile remembers between decisions is exercised too.

Run ``python -m tests.router.policy.decision_cases`` to rewrite ``recorded_decisions.json``; the
file in the repository was recorded before the policies moved to column arithmetic, and must not be
rewritten to make a failing test pass.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from protos.routing import LengthEstimate, RoutingRequest
from router.policy.config import profile_from_mapping
from router.policy.plugin import RouteDecision
from router.policy.profile import Profile
from router.policy.registry import build_policy, policy_names
from router.policy.view import ClusterView, ReplicaLoad
from tests.router.helpers import MODEL, DictPrefix, replica, speed

RECORDED = Path(__file__).with_name("recorded_decisions.json")
GPUS = ("h100-80gb", "a100-80gb", "v100-32gb", "l4-24gb", None)
CASES = 10
DECISIONS_PER_CASE = 5
SIZES = (1, 2, 5, 9, 16, 40)

CUSTOM_PROFILES: dict[str, dict[str, object]] = {
    "four_scorers_weighted_random": {
        "name": "four_scorers_weighted_random",
        "filters": ["healthy", "model", {"name": "staleness", "params": {"max_staleness_s": 0.15}}],
        "scorers": [
            {"name": "sal", "weight": 3},
            {"name": "prefix", "weight": 1},
            {"name": "llumnix", "weight": 0.5},
            {"name": "least_request", "weight": 2},
        ],
        "picker": "weighted_random",
    },
    "edge_tier_cache_aware": {
        "name": "edge_tier_cache_aware",
        "filters": ["healthy", {"name": "tier", "params": {"tier": "edge"}}],
        "scorers": [{"name": "cache_aware", "params": {"balance_abs_threshold": 3.0}}],
    },
    "two_scorers_power_of_two": {
        "name": "two_scorers_power_of_two",
        "filters": ["model", "kv_headroom"],
        "scorers": [{"name": "dynamo_cost", "weight": 2}, {"name": "lmetric", "weight": 1}],
        "picker": "power_of_two",
    },
}


def profiles() -> dict[str, Profile]:
    built = {name: build_policy(name) for name in policy_names()}
    built["predicted_cost_tight"] = build_policy("predicted_cost", {"kv_threshold": 0.5})
    built["sal_no_headroom"] = build_policy("sal", {"kv_headroom": False})
    built.update({name: profile_from_mapping(data) for name, data in CUSTOM_PROFILES.items()})
    return built


def random_load(index: int, rng: random.Random) -> ReplicaLoad:
    total = rng.choice((0, 300, 2000, 9000))
    running = rng.choice((0, 0, rng.randint(1, 80)))
    waiting = rng.choice((0, 0, rng.randint(1, 9)))
    load = replica(
        f"r{index}",
        rng.choice(GPUS),
        model=MODEL if rng.random() > 0.1 else "qwen-7b",
        tier=rng.choice(("edge", "cloud")),
        total_blocks=total,
        free_blocks=rng.randint(0, total),
        block_size=16 if rng.random() > 0.15 else 32,
        pending_blocks=rng.choice((0, rng.randint(0, 500))),
        num_running=running,
        running_context_tokens=running * rng.randint(100, 3000),
        num_waiting=waiting,
        waiting_prefill_tokens=waiting * rng.randint(0, 3000),
        inflight_requests=running + waiting + rng.randint(0, 3),
        pending_requests=rng.randint(0, 2),
        pending_prefill_tokens=rng.choice((0, rng.randint(1, 3000))),
        healthy=rng.random() > 0.08,
        draining=rng.random() < 0.04,
        circuit_open=rng.random() < 0.04,
        staleness_s=rng.uniform(0.0, 0.2),
    )
    if rng.random() < 0.3:
        load = dataclasses.replace(
            load, speed=dataclasses.replace(load.speed, correction=rng.uniform(0.5, 2))
        )
    return load


def random_request(index: int, rng: random.Random) -> RoutingRequest:
    prompt = rng.choice((0, rng.randint(1, 15), rng.randint(16, 4000)))
    median = rng.uniform(10, 600)
    bins: tuple[tuple[int, float], ...] = ()
    if rng.random() < 0.3:
        bins = ((64, 0.2), (256, 0.5), (1024, 0.2), (4096, 0.1))
    predicted = rng.choice((None, LengthEstimate(median * 1.3, median, median * 3, bins)))
    blocks = prompt // 16 if rng.random() > 0.2 else 0
    return RoutingRequest(
        f"q{index}",
        rng.choice((MODEL, MODEL, MODEL, "")),
        prompt,
        tuple(range(1, blocks + 1)),
        rng.choice((64, 1024, 8192)),
        predicted,
    )


def changed(load: ReplicaLoad, rng: random.Random) -> ReplicaLoad:
    """``load`` after a snapshot or a ledger charge."""
    running = rng.choice((0, rng.randint(1, 80)))
    gpu = rng.choice(GPUS)
    return dataclasses.replace(
        load,
        num_running=running,
        running_context_tokens=running * rng.randint(100, 3000),
        free_blocks=rng.randint(0, max(0, load.total_blocks)),
        pending_blocks=rng.choice((0, rng.randint(0, 300))),
        pending_requests=rng.randint(0, 3),
        pending_prefill_tokens=rng.randint(0, 5000),
        inflight_requests=rng.randint(0, 90),
        healthy=rng.random() > 0.05,
        speed=speed(gpu) if rng.random() < 0.2 else load.speed,
    )


def case_views(seed: int) -> Iterator[tuple[ClusterView, RoutingRequest]]:
    rng = random.Random(seed)
    loads = [random_load(i, rng) for i in range(SIZES[seed % len(SIZES)])]
    cached = {load.replica_id: range(1, rng.randint(2, 200)) for load in loads if rng.random() < 0.4}
    prefix = DictPrefix(cached)
    for step in range(DECISIONS_PER_CASE):
        for _ in range(rng.randint(1, 2)):
            index = rng.randrange(len(loads))
            loads[index] = changed(loads[index], rng)
        if step == 3 and len(loads) > 2:
            loads.pop(rng.randrange(len(loads)))  # a replica leaves the fleet
        yield ClusterView(tuple(loads), float(step), prefix, step), random_request(seed * 100 + step, rng)


def rounded(value: float) -> float:
    """Ten significant digits: the recorded file stays small, and a comparison allows for rounding."""
    return float(f"{value:.10g}")


def described(decision: RouteDecision) -> dict[str, object]:
    """The decision as recorded: the parts are listed only where they differ from the total."""
    return {
        "replica_id": decision.replica_id,
        "filtered_out": [list(item) for item in decision.filtered_out],
        "reason": decision.reason,
        "scores": [
            [s.replica_id, rounded(s.total)]
            + ([[rounded(value) for _, value in s.parts]] if len(s.parts) > 1 else [])
            for s in decision.scores
        ],
    }


def decisions_of(profile: Profile) -> list[dict[str, object]]:
    """Every decision of ``profile`` over all the cases, with one seeded rng per case."""
    out: list[dict[str, object]] = []
    for seed in range(CASES):
        rng = random.Random(seed)
        out.extend(described(profile.decide(req, cluster, rng)) for cluster, req in case_views(seed))
    return out


def record(names: Sequence[str] | None = None) -> dict[str, list[dict[str, object]]]:
    built = profiles()
    return {name: decisions_of(built[name]) for name in (names or built)}


if __name__ == "__main__":
    RECORDED.write_text(json.dumps(record(), separators=(",", ":")) + "\n")
