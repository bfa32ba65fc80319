"""Filters: each keeps exactly the replicas its rule allows."""

from __future__ import annotations

import pytest

from protos.routing import LengthEstimate, RoutingRequest
from router.policy.plugin import Filter
from router.policy.plugins.filter_healthy import HealthyFilter
from router.policy.plugins.filter_kv_headroom import KvHeadroomFilter
from router.policy.plugins.filter_model import ModelFilter
from router.policy.plugins.filter_staleness import StalenessFilter
from router.policy.plugins.filter_tier import TierFilter
from router.policy.view import ClusterView
from tests.router.helpers import DictPrefix, replica, request, view

MIXED = view(
    replica("ok"),
    replica("sick", healthy=False),
    replica("draining", draining=True),
    replica("open", circuit_open=True),
    replica("other-model", model="qwen-7b"),
    replica("stale", staleness_s=5.0),
    replica("edge", tier="edge"),
)
ALL_IDS = ("ok", "sick", "draining", "open", "other-model", "stale", "edge")

# prompt 160 tokens = 10 blocks; p90 output 160 tokens = 10 more: 20 blocks needed without a prefix hit
KV_REQUEST = request(160, predicted=LengthEstimate(100, 80, 160))
KV_VIEW = view(
    replica("roomy", free_blocks=20),
    replica("tight", free_blocks=19),
    replica("promised-away", free_blocks=30, pending_blocks=11),
    replica("cached", free_blocks=15),
    prefix=DictPrefix({"cached": range(1, 6)}),
)


@pytest.mark.parametrize(
    ("plugin", "req", "cluster", "kept"),
    [
        (HealthyFilter(), request(), MIXED, ("ok", "other-model", "stale", "edge")),
        (ModelFilter(), request(), MIXED, tuple(i for i in ALL_IDS if i != "other-model")),
        (ModelFilter(), request(model="qwen-7b"), MIXED, ("other-model",)),
        (ModelFilter(), request(model=""), MIXED, ALL_IDS),
        (StalenessFilter(), request(), MIXED, tuple(i for i in ALL_IDS if i != "stale")),
        (StalenessFilter(max_staleness_s=10.0), request(), MIXED, ALL_IDS),
        (TierFilter("edge"), request(), MIXED, ("edge",)),
        (TierFilter(), request(), MIXED, ALL_IDS),
        (TierFilter(), request(extra=(("tier", "edge"),)), MIXED, ("edge",)),
        (KvHeadroomFilter(), KV_REQUEST, KV_VIEW, ("roomy", "cached")),
    ],
    ids=lambda value: value.name if hasattr(value, "name") else None,
)
def test_filter_keeps_exactly(
    plugin: Filter, req: RoutingRequest, cluster: ClusterView, kept: tuple[str, ...]
) -> None:
    assert tuple(r.replica_id for r in plugin.filter(req, cluster.replicas, cluster)) == kept


def test_kv_headroom_without_prediction_reserves_max_tokens() -> None:
    cluster = view(replica("small", free_blocks=40), replica("large", free_blocks=42))
    # 160 prompt + 512 max_tokens = 672 tokens = 42 blocks
    kept = KvHeadroomFilter().filter(request(160, max_tokens=512), cluster.replicas, cluster)
    assert [r.replica_id for r in kept] == ["large"]


def test_kv_headroom_keeps_everyone_when_no_replica_fits() -> None:
    cluster = view(replica("a", free_blocks=1), replica("b", free_blocks=2))
    assert KvHeadroomFilter().filter(KV_REQUEST, cluster.replicas, cluster) == cluster.replicas


def test_staleness_may_remove_everyone() -> None:
    cluster = view(replica("a", staleness_s=3.0))
    assert list(StalenessFilter().filter(request(), cluster.replicas, cluster)) == []


def test_filter_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="max_staleness_s"):
        StalenessFilter(max_staleness_s=0.0)
    with pytest.raises(ValueError, match="tier"):
        TierFilter("moon")
