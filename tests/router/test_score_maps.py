"""Cost-to-score maps and the memo of cost-model evaluations."""

from __future__ import annotations

import math

import pytest

from router.policy.plugins.score_maps import higher_is_better, lower_is_better, ratio_scores
from router.policy.plugins.speed_cache import SpeedCache
from tests.router.helpers import replica


@pytest.mark.parametrize(
    ("costs", "offset", "expected"),
    [
        ({"a": 1.0, "b": 2.0, "c": 4.0}, 0.0, {"a": 1.0, "b": 0.5, "c": 0.25}),
        ({"a": 0.0, "b": 1.0}, 1.0, {"a": 1.0, "b": 0.5}),
        ({"a": 3.0, "b": 3.0}, 0.0, {"a": 1.0, "b": 1.0}),
        ({"a": 2.0, "b": math.inf}, 0.0, {"a": 1.0, "b": 0.0}),
        ({"a": math.inf}, 1.0, {"a": 0.0}),
        ({}, 1.0, {}),
    ],
)
def test_ratio_scores(costs: dict[str, float], offset: float, expected: dict[str, float]) -> None:
    assert ratio_scores(costs, offset) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("values", "lower", "higher"),
    [
        ({"a": 0, "b": 5, "c": 10}, {"a": 1.0, "b": 0.5, "c": 0.0}, {"a": 0.0, "b": 0.5, "c": 1.0}),
        ({"a": 7, "b": 7}, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}),
        ({}, {}, {}),
    ],
)
def test_min_max_maps(values: dict[str, float], lower: dict[str, float], higher: dict[str, float]) -> None:
    assert lower_is_better(values) == pytest.approx(lower)
    assert higher_is_better(values) == pytest.approx(higher)


def test_infinite_values_stay_on_top() -> None:
    assert higher_is_better({"idle": math.inf, "a": 1.0, "b": 3.0}) == {"idle": 1.0, "a": 0.0, "b": 0.5}
    assert higher_is_better({"idle": math.inf, "a": 2.0}) == {"idle": 1.0, "a": 0.5}
    assert higher_is_better({"x": math.inf, "y": math.inf}) == {"x": 1.0, "y": 1.0}


@pytest.mark.parametrize("gpu", ["h100-80gb", "v100-32gb", None])
def test_speed_cache_returns_what_the_speed_model_does(gpu: str | None) -> None:
    cache = SpeedCache()
    for running, context in ((0, 0), (8, 8000), (8, 8000), (64, 64 * 3000)):
        r = replica("r", gpu, num_running=running, running_context_tokens=context)
        mean = context / running if running else 0.0
        assert cache.prefill_tokens_per_s(r) == r.speed.prefill_tokens_per_s(running, mean)
        for batch in (0, 1, running + 1):
            assert cache.decode_step_s(r, batch) == r.speed.decode_step_s(batch, mean)


def test_speed_cache_applies_each_replicas_correction() -> None:
    cache, fast = SpeedCache(), replica("a", "a100-80gb")
    slow = replica("b", "a100-80gb", speed=type(fast.speed)(fast.speed.cost_model, correction=0.5))
    assert cache.prefill_tokens_per_s(slow) == pytest.approx(cache.prefill_tokens_per_s(fast) / 2)
    assert cache.decode_step_s(slow, 4) == pytest.approx(cache.decode_step_s(fast, 4) * 2)
