"""predicted_cost: the outcome distribution, the cost formula by hand, the KV safety threshold."""

from __future__ import annotations

import pytest

from protos.routing import LengthEstimate
from router.policy.plugins.score_predicted_cost import (
    PredictedCostScorer,
    expected_cost_s,
    kv_usage_after,
    output_outcomes,
)
from router.policy.view import ClusterView, ReplicaLoad
from tests.router.helpers import best, replica, request, view


@pytest.mark.parametrize(
    ("predicted", "max_tokens", "outcomes"),
    [
        (None, 300, ((300.0, 1.0),)),
        (LengthEstimate(120, 100, 250), 1000, ((100, 0.5), (120, 0.3), (250, 0.2))),
        (LengthEstimate(120, 100, 250), 200, ((100, 0.5), (120, 0.3), (200, 0.2))),
        (LengthEstimate(100, 80, 200, bins=((64, 0.5), (256, 0.5))), 1000, ((32.0, 0.5), (160.0, 0.5))),
        (LengthEstimate(100, 80, 200, bins=((64, 1.0), (256, 3.0))), 100, ((32.0, 0.25), (100.0, 0.75))),
        (
            LengthEstimate(100, 80, 200, bins=((64, 0.0), (256, 0.0))),
            1000,
            ((80, 0.5), (100, 0.3), (200, 0.2)),
        ),
    ],
)
def test_output_outcomes(
    predicted: LengthEstimate | None, max_tokens: int, outcomes: tuple[tuple[float, float], ...]
) -> None:
    got = output_outcomes(request(800, max_tokens=max_tokens, predicted=predicted))
    assert [value for point in got for value in point] == pytest.approx(
        [v for point in outcomes for v in point]
    )


def default_speed_replica(free_blocks: int = 1000) -> ReplicaLoad:
    """Unknown hardware: 8000 prefill tokens/s and 30 ms decode steps whatever the batch."""
    return replica(
        "x",
        None,
        waiting_prefill_tokens=8000,
        num_running=2,
        num_waiting=1,
        running_context_tokens=4000,
        free_blocks=free_blocks,
    )


def test_expected_cost_by_hand() -> None:
    req = request(800, blocks=0, max_tokens=100, predicted=LengthEstimate.point(100))
    # queue 8000/8000 + own prefill 800/8000 + it delays 2 running decodes by 0.1 each + 100 steps x 30 ms
    assert expected_cost_s(req, default_speed_replica(), 0, output_outcomes(req)) == pytest.approx(4.3)
    # 800 + 100 tokens = 57 blocks > 55 free: a preemption recomputes 900 tokens
    tight = default_speed_replica(free_blocks=55)
    assert expected_cost_s(req, tight, 0, output_outcomes(req)) == pytest.approx(4.3 + 900 / 8000)


def test_the_spread_of_the_prediction_matters_near_a_full_cache() -> None:
    req = request(800, blocks=0, max_tokens=1000)
    certain = ((100.0, 1.0),)
    spread = ((10.0, 0.5), (190.0, 0.5))  # same mean; 990 tokens need 62 blocks
    roomy, tight = default_speed_replica(), default_speed_replica(free_blocks=60)
    assert expected_cost_s(req, roomy, 0, spread) == pytest.approx(expected_cost_s(req, roomy, 0, certain))
    assert expected_cost_s(req, tight, 0, spread) > expected_cost_s(req, tight, 0, certain)


def test_a_bigger_batch_costs_more_through_the_marginal_step() -> None:
    cluster = view(
        replica("light", num_running=2, running_context_tokens=2000),
        replica("heavy", num_running=64, running_context_tokens=64 * 1000),
    )
    req = request(500, predicted=LengthEstimate(200, 150, 400))
    scores = PredictedCostScorer().score(req, cluster.replicas, cluster)
    assert best(scores) == "light" and scores["heavy"] < 0.9


@pytest.mark.parametrize(
    ("cluster", "winner"),
    [
        (view(replica("h100", "h100-80gb"), replica("v100", "v100-32gb")), "h100"),
        # sal would take the idle V100 here (first token sooner), but 100 decode steps at 7 ms on the
        # H100 against 24 ms on the V100 make the H100 finish first
        (
            view(replica("h100", "h100-80gb", waiting_prefill_tokens=20_000), replica("v100", "v100-32gb")),
            "h100",
        ),
        (
            view(replica("h100", "h100-80gb", waiting_prefill_tokens=100_000), replica("v100", "v100-32gb")),
            "v100",
        ),
    ],
)
def test_predicted_cost_is_speed_aware(cluster: ClusterView, winner: str) -> None:
    req = request(1000, predicted=LengthEstimate(100, 80, 200))
    assert best(PredictedCostScorer().score(req, cluster.replicas, cluster)) == winner


def test_kv_safety_threshold() -> None:
    req = request(160, predicted=LengthEstimate(100, 80, 160))  # 20 blocks at p90
    safe, unsafe = replica("safe", free_blocks=150), replica("unsafe", gpu="h100-80gb", free_blocks=100)
    assert kv_usage_after(req, safe, 0) == pytest.approx(0.87)
    assert kv_usage_after(req, unsafe, 0) == pytest.approx(0.92)
    cluster = view(safe, unsafe)
    assert PredictedCostScorer().score(req, cluster.replicas, cluster)["unsafe"] == 0.0
    lenient = PredictedCostScorer(kv_threshold=0.95).score(req, cluster.replicas, cluster)
    assert best(lenient) == "unsafe"
    all_unsafe = view(replica("a", free_blocks=50), replica("b", free_blocks=50, num_running=8))
    assert best(PredictedCostScorer().score(req, all_unsafe.replicas, all_unsafe)) == "a"
    with pytest.raises(ValueError, match="kv_threshold"):
        PredictedCostScorer(kv_threshold=0.0)
