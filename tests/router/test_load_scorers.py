"""Load and cache scorers: queue_depth, least_kv, least_request, prefix and SGLang's cache_aware."""

from __future__ import annotations

import pytest

from router.policy.plugin import Scorer
from router.policy.plugins.score_cache_aware import CacheAwareScorer, load_is_balanced
from router.policy.plugins.score_least_kv import LeastKvScorer
from router.policy.plugins.score_least_request import LeastRequestScorer
from router.policy.plugins.score_prefix import PrefixScorer
from router.policy.plugins.score_queue_depth import QueueDepthScorer
from router.policy.view import ClusterView
from tests.router.helpers import DictPrefix, best, replica, request, view

PREFIX = DictPrefix({"holder": range(1, 61), "partial": range(1, 16)})


@pytest.mark.parametrize(
    ("scorer", "cluster", "expected"),
    [
        (
            QueueDepthScorer(),
            view(replica("a", num_waiting=2), replica("b", num_waiting=4, pending_requests=2), replica("c")),
            {"a": 2 / 3, "b": 0.0, "c": 1.0},
        ),
        (
            QueueDepthScorer(),
            view(replica("a", num_waiting=3), replica("b", num_waiting=3)),
            {"a": 1.0, "b": 1.0},
        ),
        (
            LeastKvScorer(),
            view(
                replica("a", free_blocks=250), replica("b", free_blocks=800, pending_blocks=300), replica("c")
            ),
            {"a": 0.25, "b": 0.5, "c": 1.0},
        ),
        (
            LeastRequestScorer(),
            view(replica("a", inflight_requests=10), replica("b", inflight_requests=30), replica("c")),
            {"a": 2 / 3, "b": 0.0, "c": 1.0},
        ),
        (
            PrefixScorer(),
            view(replica("holder"), replica("partial"), replica("cold"), prefix=PREFIX),
            {"holder": 1.0, "partial": 0.25, "cold": 0.0},
        ),
    ],
    ids=lambda value: getattr(value, "name", None),
)
def test_scores(scorer: Scorer, cluster: ClusterView, expected: dict[str, float]) -> None:
    scores = scorer.score(request(960), cluster.replicas, cluster)  # 60 blocks
    assert scores == pytest.approx(expected)


def test_prefix_scores_zero_for_a_request_without_blocks() -> None:
    cluster = view(replica("holder"), prefix=PREFIX)
    assert PrefixScorer().score(request(10), cluster.replicas, cluster) == {"holder": 0.0}


@pytest.mark.parametrize(
    ("loads", "balanced"),
    [
        ((0, 64), True),  # within the absolute threshold
        ((10, 100), False),  # 90 apart and 10x
        ((100, 150), True),  # 50 apart
        ((200, 290), True),  # 90 apart but only 1.45x
        ((200, 310), False),  # 110 apart and 1.55x
        ((), True),
    ],
)
def test_load_balance_thresholds(loads: tuple[int, ...], balanced: bool) -> None:
    assert load_is_balanced(loads, 64, 1.5) is balanced


@pytest.mark.parametrize(
    ("holder_load", "other_load", "cached_blocks", "winner"),
    [
        (5, 0, 60, "holder"),  # balanced, full match: follow the cache
        (60, 0, 60, "holder"),  # still within 64 of each other
        (200, 10, 60, "other"),  # imbalanced: least loaded, cache or not
        (5, 0, 15, "other"),  # match ratio 0.25 < 0.3: least loaded
    ],
)
def test_cache_aware_routing(holder_load: int, other_load: int, cached_blocks: int, winner: str) -> None:
    cluster = view(
        replica("holder", inflight_requests=holder_load),
        replica("other", inflight_requests=other_load),
        prefix=DictPrefix({"holder": range(1, cached_blocks + 1)}),
    )
    scores = CacheAwareScorer().score(request(960), cluster.replicas, cluster)
    assert best(scores) == winner


def test_cache_aware_low_match_goes_to_least_loaded() -> None:
    cluster = view(
        replica("holder", inflight_requests=5),
        replica("other", inflight_requests=2),
        prefix=DictPrefix({"holder": range(1, 10)}),
    )
    scores = CacheAwareScorer().score(request(960), cluster.replicas, cluster)
    assert scores == {"holder": 0.0, "other": 1.0}
    lenient = CacheAwareScorer(cache_threshold=0.1).score(request(960), cluster.replicas, cluster)
    assert lenient == pytest.approx({"holder": 9 / 60, "other": 0.0})


def test_cache_aware_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="cache_threshold"):
        CacheAwareScorer(cache_threshold=1.5)
    with pytest.raises(ValueError, match="balance"):
        CacheAwareScorer(balance_rel_threshold=0.5)
