"""Online correction of an output-length predictor: hand-computed shifts, fading in, bounds, tenants."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from predictors.base import LengthEstimate, PredictorFeatures
from predictors.online import CorrectionSettings, OnlineCorrectedPredictor, PredictionMemory, scale_estimate


@dataclass
class FixedPredictor:
    """Always the same estimate; counts its calls and what it was told."""

    estimate: LengthEstimate = field(default_factory=lambda: LengthEstimate(120.0, 100.0, 300.0))
    predictions: int = 0
    observed: list[int] = field(default_factory=list)

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        self.predictions += 1
        return self.estimate

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        self.observed.append(actual_tokens)


def _features(
    tenant: str | None = None, max_tokens: int = 4096, prompt_tokens: int = 10
) -> PredictorFeatures:
    return PredictorFeatures("m", prompt_tokens, max_tokens, tenant=tenant)


def test_no_correction_before_any_observation() -> None:
    predictor = OnlineCorrectedPredictor(FixedPredictor())
    assert predictor.predict(_features()) == LengthEstimate(120.0, 100.0, 300.0)
    assert predictor.factor("m") == 1.0


def test_the_correction_fades_in_with_observations() -> None:
    # Every answer is 4x the predicted p50: log ratio log 4. With prior_observations 2 the shift is
    # log 4 * n / (n + 2): n=1 -> 4^(1/3), n=2 -> 4^(1/2) = 2, n=6 -> 4^(3/4).
    predictor = OnlineCorrectedPredictor(FixedPredictor(), CorrectionSettings(prior_observations=2))
    factors = []
    for _ in range(6):
        predictor.predict(_features())
        predictor.observe(_features(), 400)
        factors.append(predictor.factor("m"))
    assert factors[0] == pytest.approx(4 ** (1 / 3))
    assert factors[1] == pytest.approx(2.0)
    assert factors[5] == pytest.approx(4 ** (3 / 4))
    corrected = predictor.predict(_features())
    assert (corrected.mean, corrected.p50, corrected.p90) == pytest.approx(
        (120.0 * 4**0.75, 100.0 * 4**0.75, 300.0 * 4**0.75)
    )


def test_the_correction_is_the_median_of_the_recent_ratios() -> None:
    # prior 0: no shrinkage; window 3. Ratios 1, 2, 8 -> median 2.
    predictor = OnlineCorrectedPredictor(
        FixedPredictor(), CorrectionSettings(prior_observations=0, window=3, max_factor=10)
    )
    for actual in (100, 200, 800):
        predictor.observe(_features(), actual)
    assert predictor.factor("m") == pytest.approx(2.0)
    predictor.observe(_features(), 0)  # counts as one token (ratio 1/100), and moves no median much
    assert predictor.factor("m") == pytest.approx(2.0)  # window 2, 8, 1/100
    predictor.observe(_features(), 800)
    predictor.observe(_features(), 800)
    assert predictor.factor("m") == pytest.approx(8.0)  # window 1/100, 8, 8: it follows the drift


def test_the_correction_is_bounded_and_capped_by_max_tokens() -> None:
    settings = CorrectionSettings(prior_observations=0, max_factor=3.0)
    predictor = OnlineCorrectedPredictor(FixedPredictor(), settings)
    predictor.observe(_features(), 100_000)
    assert predictor.factor("m") == pytest.approx(3.0)
    capped = predictor.predict(_features(max_tokens=250))
    assert capped == LengthEstimate(250.0, 250.0, 250.0)
    predictor.observe(_features(), 1)
    predictor.observe(_features(), 1)
    predictor.observe(_features(), 1)
    assert predictor.factor("m") >= 1 / 3 - 1e-12


def test_a_tenant_borrows_its_model_correction_until_it_has_its_own() -> None:
    # prior 1, window 3. The model sees ratio 2 from tenant a twice, then 1/2 from tenant b.
    settings = CorrectionSettings(prior_observations=1, window=3)
    predictor = OnlineCorrectedPredictor(FixedPredictor(), settings)
    predictor.observe(_features("a"), 200)
    predictor.observe(_features("a"), 200)
    # model: n=2, median log 2 -> shift 2/3 log 2; tenant a: n=2, median log 2 -> 2/3 log 2 + 1/3 (2/3 log 2)
    assert predictor.factor("m") == pytest.approx(2 ** (2 / 3))
    assert predictor.factor("m", "a") == pytest.approx(2 ** (2 / 3 + 2 / 9))
    assert predictor.factor("m", "new") == pytest.approx(2 ** (2 / 3))  # unseen tenant: the model's
    predictor.observe(_features("b"), 50)
    # model: n=3, median log 2 -> shift 3/4 log 2; tenant b: n=1, 1/2 (-log 2) + 1/2 (3/4 log 2)
    assert predictor.factor("m") == pytest.approx(2 ** (3 / 4))
    assert predictor.factor("m", "b") == pytest.approx(2 ** (-1 / 8))
    assert predictor.factor("other-model") == 1.0


def test_observe_uses_the_prediction_made_at_routing_time_and_feeds_the_inner_predictor() -> None:
    inner = FixedPredictor()
    predictor = OnlineCorrectedPredictor(inner, CorrectionSettings(prior_observations=0, window=1))
    predictor.predict(_features())
    inner.estimate = LengthEstimate(10.0, 10.0, 10.0)  # the model changed since
    predictor.observe(_features(), 300)
    assert predictor.factor("m") == pytest.approx(3.0)  # against the remembered p50 100, not 10
    assert inner.observed == [300] and inner.predictions == 1
    predictor.observe(_features(prompt_tokens=99), 20)  # never predicted: asked again
    assert predictor.factor("m") == pytest.approx(2.0) and inner.predictions == 2


def test_prediction_memory_forgets_the_oldest_beyond_capacity() -> None:
    memory: PredictionMemory[int] = PredictionMemory(2)
    for tokens in (1, 2, 3):
        memory.remember(_features(prompt_tokens=tokens), tokens)
    assert len(memory) == 2
    assert memory.recall(_features(prompt_tokens=1)) is None
    assert memory.recall(_features(prompt_tokens=3)) == 3 and len(memory) == 1


def test_bins_scale_and_merge() -> None:
    estimate = LengthEstimate(100.0, 80.0, 200.0, bins=((10, 0.2), (11, 0.3), (400, 0.5)))
    scaled = scale_estimate(estimate, 0.1, 0)
    assert scaled.bins == ((1, 0.5), (40, 0.5))
    assert scaled.mean == pytest.approx(10.0) and scaled.p90 == pytest.approx(20.0)


@pytest.mark.parametrize(
    "settings",
    [{"prior_observations": -1}, {"window": 0}, {"max_factor": 0.5}, {"memory": 0}],
)
def test_bad_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CorrectionSettings(**settings)  # type: ignore[arg-type]


def test_negative_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        OnlineCorrectedPredictor(FixedPredictor()).observe(_features(), -1)
