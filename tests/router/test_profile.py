"""Profiles: filters recorded, empty candidate sets, weighted and clamped totals, ranking, determinism."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pytest

from protos.routing import RoutingRequest
from router.policy.plugin import Picker, Scorer
from router.policy.plugins.filter_healthy import HealthyFilter
from router.policy.plugins.filter_model import ModelFilter
from router.policy.plugins.pick_max_score import MaxScorePicker
from router.policy.plugins.pick_random import RandomPicker
from router.policy.plugins.score_least_kv import LeastKvScorer
from router.policy.plugins.score_prefix import PrefixScorer
from router.policy.profile import Profile, WeightedScorer
from router.policy.registry import build_policy, policy_names
from router.policy.view import ClusterView, ReplicaLoad
from tests.router.helpers import DictPrefix, replica, request, view


@dataclass(frozen=True)
class FixedScorer:
    name: str
    values: Mapping[str, float]

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        return self.values


CLUSTER = view(
    replica("a", free_blocks=900),
    replica("b", free_blocks=100),
    replica("sick", healthy=False),
    replica("qwen", model="qwen-7b"),
    prefix=DictPrefix({"b": range(1, 61)}),
)


def profile(*scorers: tuple[Scorer, float], picker: Picker | None = None) -> Profile:
    return Profile(
        "test",
        (HealthyFilter(), ModelFilter()),
        tuple(WeightedScorer(s, w) for s, w in scorers),
        picker or MaxScorePicker(),
    )


def test_filters_are_recorded_and_totals_are_normalised_weighted_sums() -> None:
    decision = profile((LeastKvScorer(), 1.0), (PrefixScorer(), 3.0)).decide(
        request(960), CLUSTER, random.Random(0)
    )
    assert decision.filtered_out == (("sick", "healthy"), ("qwen", "model"))
    assert decision.replica_id == "b"
    parts = {s.replica_id: dict(s.parts) for s in decision.scores}
    assert parts == {
        "a": {"least_kv": 0.9, "prefix": 0.0},
        "b": {"least_kv": pytest.approx(0.1), "prefix": 1.0},
    }
    totals = {s.replica_id: s.total for s in decision.scores}
    assert totals == pytest.approx({"a": 0.9 / 4, "b": (0.1 + 3.0) / 4})
    assert decision.ranked == ("b", "a")
    assert decision.policy == "test" and decision.request_id == "req-1"
    assert "b" in decision.reason and "2 filtered out" in decision.reason


def test_an_emptied_candidate_list_names_the_filter() -> None:
    decision = profile((LeastKvScorer(), 1.0)).decide(request(model="mistral"), CLUSTER, random.Random(0))
    assert decision.replica_id is None and decision.scores == ()
    assert "'model'" in decision.reason
    assert ("a", "model") in decision.filtered_out and ("sick", "healthy") in decision.filtered_out
    assert profile().decide(request(), view(), random.Random(0)).reason == "no replicas in the cluster view"


def test_scores_are_clamped_and_missing_ids_score_zero() -> None:
    wild = FixedScorer("wild", {"a": 2.0, "b": math.nan})
    negative = FixedScorer("negative", {"a": -1.0})
    decision = profile((wild, 1.0), (negative, 1.0)).decide(request(), CLUSTER, random.Random(0))
    assert {s.replica_id: s.parts for s in decision.scores} == {
        "a": (("wild", 1.0), ("negative", 0.0)),
        "b": (("wild", 0.0), ("negative", 0.0)),
    }
    single = profile((wild, 2.0)).decide(request(), CLUSTER, random.Random(0))
    assert {s.replica_id: s.total for s in single.scores} == {"a": 1.0, "b": 0.0}


def test_zero_weights_and_no_scorers_give_zero_totals() -> None:
    for built in (profile((LeastKvScorer(), 0.0)), profile(picker=RandomPicker())):
        decision = built.decide(request(), CLUSTER, random.Random(0))
        assert decision.replica_id in {"a", "b"}
        assert all(s.total == 0.0 for s in decision.scores)


def test_profile_is_validated() -> None:
    with pytest.raises(ValueError, match="weight"):
        WeightedScorer(LeastKvScorer(), -1.0)
    with pytest.raises(ValueError, match="weight"):
        WeightedScorer(LeastKvScorer(), math.inf)
    with pytest.raises(ValueError, match="more than once"):
        profile((LeastKvScorer(), 1.0), (LeastKvScorer(), 2.0))
    with pytest.raises(ValueError, match="name"):
        Profile("", (), (), MaxScorePicker())


@pytest.mark.parametrize("name", policy_names())
def test_every_policy_is_deterministic_given_the_seed(name: str) -> None:
    fleet = view(
        *(replica(f"r{i}", free_blocks=100 + 50 * (i % 4), inflight_requests=i % 3) for i in range(8)),
        prefix=DictPrefix({"r3": range(1, 61)}),
    )

    def run() -> list[str | None]:
        policy, rng = build_policy(name), random.Random(42)
        return [policy.decide(request(960, request_id=str(i)), fleet, rng).replica_id for i in range(20)]

    first = run()
    assert first == run()
    assert all(choice is not None for choice in first)
