from __future__ import annotations

import math

import pytest

from router.state.speed import MAX_CORRECTION, MIN_CORRECTION, CostModels, SpeedCorrection


def test_correction_starts_at_one_and_moves_towards_observed_factor() -> None:
    correction = SpeedCorrection(alpha=0.2)
    assert correction.value == 1.0
    for _ in range(200):
        # The prediction uses the current correction, as the view's speed does: true factor is 2.
        correction.observe(predicted_prefill_s=1.0 / correction.value, actual_ttft_s=0.5)
    assert correction.value == pytest.approx(2.0, rel=1e-3)


def test_correction_is_clamped() -> None:
    fast, slow = SpeedCorrection(alpha=1.0), SpeedCorrection(alpha=1.0)
    fast.observe(100.0, 0.01)
    slow.observe(0.01, 100.0)
    assert fast.value == MAX_CORRECTION and slow.value == MIN_CORRECTION


def test_tiny_predictions_are_ignored() -> None:
    correction = SpeedCorrection(min_predicted_s=0.01)
    assert not correction.observe(0.001, 0.5)
    assert correction.value == 1.0 and correction.samples == 0


@pytest.mark.parametrize(
    "predicted,actual", [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, math.inf)]
)
def test_rejects_invalid_times(predicted: float, actual: float) -> None:
    with pytest.raises(ValueError):
        SpeedCorrection().observe(predicted, actual)


def test_rejects_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        SpeedCorrection(alpha=0.0)
    with pytest.raises(ValueError):
        SpeedCorrection(min_predicted_s=-1.0)


def test_cost_models_are_shared_per_pair() -> None:
    models = CostModels()
    assert models.get("h100-80gb", "llama-2-7b") is models.get("h100-80gb", "llama-2-7b")
    assert models.get("h100-80gb", "unknown-model") is None
    speed = models.speed("a40-48gb", "llama-2-7b", correction=0.5)
    assert speed.cost_model is not None and speed.correction == 0.5
