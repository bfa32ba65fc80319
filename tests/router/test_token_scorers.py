"""Token-aware scorers: sal, dynamo_cost, llumnix and lmetric, on small fleets with obvious answers
and on formulas checked by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from protos.routing import LengthEstimate
from router.policy.plugins.score_dynamo_cost import DynamoCostScorer, dynamo_cost
from router.policy.plugins.score_llumnix import LlumnixScorer, llumnix_freeness
from router.policy.plugins.score_lmetric import LmetricScorer, lmetric_cost
from router.policy.plugins.score_sal import SalScorer, estimated_ttft_s
from router.policy.view import ClusterView, ReplicaLoad, ReplicaSpeed
from tests.router.helpers import DictPrefix, best, replica, request, view


def sal_scores(
    cluster: ClusterView,
    prompt_tokens: int = 1000,
    max_tokens: int = 512,
    predicted: LengthEstimate | None = None,
) -> dict[str, float]:
    req = request(prompt_tokens, max_tokens=max_tokens, predicted=predicted)
    return dict(SalScorer().score(req, cluster.replicas, cluster))


@pytest.mark.parametrize(
    ("cluster", "winner"),
    [
        (
            view(replica("h100", "h100-80gb", waiting_prefill_tokens=20_000), replica("v100", "v100-32gb")),
            "v100",
        ),
        (view(replica("h100", "h100-80gb"), replica("v100", "v100-32gb")), "h100"),
        (
            view(replica("v100", "v100-32gb"), replica("a100", "a100-80gb"), replica("h100", "h100-80gb")),
            "h100",
        ),
        (
            view(
                replica("h100", "h100-80gb", waiting_prefill_tokens=2_000, pending_prefill_tokens=30_000),
                replica("a100", "a100-80gb", waiting_prefill_tokens=2_000),
            ),
            "a100",
        ),
        (  # the fast replica has no KV room for prompt + output: it scores 0
            view(replica("h100", "h100-80gb", free_blocks=50), replica("v100", "v100-32gb")),
            "v100",
        ),
        (  # a prefix hit saves most of the prompt
            view(replica("cold", waiting_prefill_tokens=500), replica("warm", waiting_prefill_tokens=500)),
            "warm",
        ),
    ],
)
def test_sal_picks(cluster: ClusterView, winner: str) -> None:
    cluster = dataclasses.replace(cluster, prefix=DictPrefix({"warm": range(1, 51)}))
    assert best(sal_scores(cluster)) == winner


def test_sal_scores_zero_only_while_some_replica_has_room() -> None:
    roomy = view(replica("h100", "h100-80gb", free_blocks=50), replica("v100", "v100-32gb"))
    assert sal_scores(roomy)["h100"] == 0.0
    cramped = view(replica("h100", "h100-80gb", free_blocks=50), replica("v100", "v100-32gb", free_blocks=50))
    scores = sal_scores(cramped)
    assert best(scores) == "h100" and scores["v100"] > 0


def test_sal_reserves_the_p90_output() -> None:
    # 1000 prompt + 600 p90 = 100 blocks; with max_tokens only (2000) it would be 188
    cluster = view(replica("h100", "h100-80gb", free_blocks=100), replica("v100", "v100-32gb"))
    assert sal_scores(cluster, predicted=LengthEstimate(300, 200, 600))["h100"] == 1.0
    assert sal_scores(cluster, max_tokens=2000)["h100"] == 0.0


def test_sal_time_is_queued_plus_uncached_over_the_modelled_rate() -> None:
    r = replica(
        "a100",
        waiting_prefill_tokens=3000,
        pending_prefill_tokens=1000,
        num_running=8,
        running_context_tokens=8 * 1500,
        speed=ReplicaSpeed(replica("x").speed.cost_model, correction=0.8),
    )
    model = r.speed.cost_model
    assert model is not None
    rate = model.prefill_tokens_per_s(8, 1500.0) * 0.8
    assert estimated_ttft_s(request(1000), r, matched=10) == pytest.approx((4000 + 1000 - 160) / rate)
    scores = sal_scores(view(r, replica("idle-h100", "h100-80gb")))
    h100 = replica("idle-h100", "h100-80gb").speed.prefill_tokens_per_s(0, 0.0)
    assert scores["a100"] == pytest.approx((1000 / h100 + 1e-3) / ((4000 + 1000) / rate + 1e-3))


def test_sal_balances_a_mixed_fleet_by_time_not_by_count() -> None:
    fleet = [replica(f"{gpu}-{i}", gpu) for gpu in ("h100-80gb", "a100-80gb", "v100-32gb") for i in range(2)]
    scorer, req = SalScorer(), request(2000, blocks=0)
    counts = dict.fromkeys((r.replica_id for r in fleet), 0)
    for _ in range(600):
        cluster = view(*fleet)
        scores = scorer.score(req, fleet, cluster)
        chosen = max(scores, key=lambda rid: scores[rid])
        counts[chosen] += 1
        fleet = [_with_one_more(r, 2000) if r.replica_id == chosen else r for r in fleet]
    rates = {r.replica_id: r.speed.prefill_tokens_per_s(0, 0.0) for r in fleet}
    waits = {r.replica_id: r.pending_prefill_tokens / rates[r.replica_id] for r in fleet}
    assert max(waits.values()) - min(waits.values()) <= 2000 / min(rates.values())
    assert counts["h100-80gb-0"] > 2 * counts["a100-80gb-0"] > 4 * counts["v100-32gb-0"] > 0


def _with_one_more(r: ReplicaLoad, tokens: int) -> ReplicaLoad:
    return dataclasses.replace(
        r, pending_requests=r.pending_requests + 1, pending_prefill_tokens=r.pending_prefill_tokens + tokens
    )


# --- dynamo_cost ----------------------------------------------------------------------------------


def test_dynamo_cost_formula() -> None:
    # prompt 320 tokens (20 blocks), 5 cached: 240 uncached = 15 blocks; 160 queued = 10 blocks;
    # 1000 total - (900 free - 50 promised) = 150 active blocks
    r = replica("a", waiting_prefill_tokens=160, free_blocks=900, pending_blocks=50)
    assert dynamo_cost(request(320), r, matched=5, prefill_weight=1.0) == pytest.approx(25 + 150)
    assert dynamo_cost(request(320), r, matched=5, prefill_weight=2.0) == pytest.approx(50 + 150)


def test_dynamo_cost_scores_are_min_over_cost() -> None:
    cluster = view(
        replica("busy", free_blocks=800),  # 200 active + 20 prefill = 220
        replica("warm", free_blocks=900),  # 100 active + 0 prefill (all 20 blocks cached) = 100
        replica("cold", free_blocks=900),  # 100 active + 20 prefill = 120
        prefix=DictPrefix({"warm": range(1, 21)}),
    )
    scores = DynamoCostScorer().score(request(320), cluster.replicas, cluster)
    assert scores == pytest.approx({"busy": 101 / 221, "warm": 1.0, "cold": 101 / 121})


# --- llumnix --------------------------------------------------------------------------------------


def test_llumnix_freeness_formula() -> None:
    # (100 free - 320/16 = 20 waiting blocks) / (3 running + 1 waiting) = 20
    r = replica("a", free_blocks=100, num_running=3, num_waiting=1, waiting_prefill_tokens=320)
    assert llumnix_freeness(r) == pytest.approx(20.0)
    assert llumnix_freeness(replica("idle")) == math.inf
    over = replica("b", free_blocks=10, num_waiting=2, waiting_prefill_tokens=640, pending_requests=2)
    assert llumnix_freeness(over) == pytest.approx((10 - 40) / 4)


def test_llumnix_prefers_idle_then_freest() -> None:
    cluster = view(
        replica("a", free_blocks=100, num_running=3, num_waiting=1, waiting_prefill_tokens=320),  # 20
        replica("b", free_blocks=500, num_running=10),  # 50
        replica("c", free_blocks=100, num_running=10),  # 10
    )
    scores = LlumnixScorer().score(request(), cluster.replicas, cluster)
    assert scores == pytest.approx({"a": 0.25, "b": 1.0, "c": 0.0})
    with_idle = view(*cluster.replicas, replica("idle", free_blocks=1))
    scores = LlumnixScorer().score(request(), with_idle.replicas, with_idle)
    assert scores == pytest.approx({"a": 0.125, "b": 0.5, "c": 0.0, "idle": 1.0})


# --- lmetric --------------------------------------------------------------------------------------


def test_lmetric_cost_formula() -> None:
    # (1000 queued + 500 uncached) x (2 running + 1 waiting + 1 unacknowledged)
    r = replica("a", waiting_prefill_tokens=600, pending_prefill_tokens=400, num_running=2, num_waiting=1)
    r = dataclasses.replace(r, pending_requests=1)
    assert lmetric_cost(request(1000), r, matched=500 // 16) == pytest.approx((1000 + 1000 - 496) * 4)


def test_lmetric_trades_cache_hits_against_batch_size() -> None:
    cluster = view(
        replica("warm-busy", num_running=4),  # (0 + 200) x 4 = 800
        replica("cold-light", num_running=1),  # (0 + 1000) x 1 = 1000
        replica("warm-idle-but-queued", num_running=2, waiting_prefill_tokens=400),  # 600 x 2 = 1200
        prefix=DictPrefix({"warm-busy": range(1, 51), "warm-idle-but-queued": range(1, 51)}),
    )
    scores = LmetricScorer().score(request(1000), cluster.replicas, cluster)
    assert best(scores) == "warm-busy"


def test_lmetric_breaks_ties_between_idle_replicas_by_prefill_tokens() -> None:
    cluster = view(replica("cold"), replica("warm"), prefix=DictPrefix({"warm": range(1, 51)}))
    assert best(LmetricScorer().score(request(1000), cluster.replicas, cluster)) == "warm"
