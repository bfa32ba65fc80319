"""The guarded predictor: the learned model while it helps, the running average when it stops."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from predictors.base import LengthEstimate, PredictorFeatures
from predictors.drift import DriftMonitor, DriftSettings, PredictionSource, SourceSwitch
from predictors.guarded import GuardedPredictor, guard_learned
from predictors.online import OnlineCorrectedPredictor
from predictors.running_average import RunningAveragePredictor


@dataclass
class LookupModel:
    """Predicts a length written into the prompt text ("<tokens>"), times ``noise`` when set."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    noisy: bool = False
    observed: int = 0

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        tokens = float(features.prompt_text or "1")
        if self.noisy:
            tokens = self.rng.lognormvariate(math.log(200), 0.9)
        return LengthEstimate(tokens, tokens, tokens * 2)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        self.observed += 1


def _run(
    predictor: GuardedPredictor, model: LookupModel, count: int, rng: random.Random, exact: bool = False
) -> list[bool]:
    """``count`` requests, each predicted then finished; whether each used the model's estimate
    (checked to be the model's exact answer with ``exact``)."""
    used_model = []
    for index in range(count):
        actual = max(1, round(rng.lognormvariate(math.log(200), 0.9)))
        features = PredictorFeatures("m", index, 4096, prompt_text=str(actual))
        estimate = predictor.predict(features)
        used_model.append(predictor.state.source is PredictionSource.MODEL)
        if exact and used_model[-1] and not model.noisy:
            assert estimate.p50 == actual
        predictor.observe(features, actual)
    return used_model


def test_routing_falls_back_to_the_running_average_and_the_switch_is_reported() -> None:
    model, switches = LookupModel(), list[SourceSwitch]()
    predictor = GuardedPredictor(
        model, RunningAveragePredictor(), DriftMonitor(DriftSettings(window=100)), switches.append
    )
    rng = random.Random(11)
    assert all(_run(predictor, model, 300, rng, exact=True))
    model.noisy = True
    used = _run(predictor, model, 300, rng)
    assert not used[-1] and used.index(False) < 100
    assert [s.state.source for s in switches] == [PredictionSource.BASELINE]
    assert isinstance(switches[0], SourceSwitch) and switches[0].previous is PredictionSource.MODEL
    features = PredictorFeatures("m", 0, 4096, prompt_text="5")
    baseline = RunningAveragePredictor()
    assert predictor.predict(features) != model.predict(features)
    assert predictor.predict(features).p50 != baseline.predict(features).p50  # it learned the lengths
    assert model.observed == 600  # the model kept learning while out of use
    model.noisy = False
    _run(predictor, model, 200, rng)
    assert predictor.state.source is PredictionSource.MODEL and len(switches) == 2


def test_the_production_stack_corrects_a_biased_model() -> None:
    class HalfModel(LookupModel):
        def predict(self, features: PredictorFeatures) -> LengthEstimate:
            tokens = float(features.prompt_text or "1") / 2
            return LengthEstimate(tokens, tokens, tokens * 2)

    predictor = guard_learned(HalfModel())
    assert isinstance(predictor.model, OnlineCorrectedPredictor)
    _run(predictor, HalfModel(), 400, random.Random(2))
    features = PredictorFeatures("m", 0, 4096, prompt_text="300")
    assert 280 < predictor.predict(features).p50 < 310  # the 2x under-prediction, corrected
    raw = guard_learned(HalfModel(), correction=None, drift=None)
    _run(raw, HalfModel(), 400, random.Random(2))
    assert raw.predict(features).p50 == 150 and raw.state.switches == 0
