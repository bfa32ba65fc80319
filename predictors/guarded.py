"""``GuardedPredictor``: a learned predictor that falls back to the running average while it does
not help.

Every request is predicted by both the model and the per-model running average; the
:class:`~predictors.drift.DriftMonitor` judges both on finished requests and picks which one the
router uses. Both keep learning from every finished request whichever is in use, so the model can
earn its place back. A switch is handed to ``on_switch`` (the caller logs it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from predictors.base import LengthEstimate, OutputLengthPredictor, PredictorFeatures
from predictors.drift import DriftMonitor, DriftSettings, DriftState, PredictionSource, SourceSwitch
from predictors.online import CorrectionSettings, OnlineCorrectedPredictor, PredictionMemory
from predictors.running_average import RunningAveragePredictor

DEFAULT_MEMORY = 4096
DEFAULT_CORRECTION = CorrectionSettings()
DEFAULT_DRIFT = DriftSettings()


@dataclass(eq=False, slots=True)
class GuardedPredictor:
    model: OutputLengthPredictor
    baseline: OutputLengthPredictor = field(default_factory=RunningAveragePredictor)
    monitor: DriftMonitor = field(default_factory=DriftMonitor)
    on_switch: Callable[[SourceSwitch], None] | None = None
    memory: int = DEFAULT_MEMORY
    _predicted: PredictionMemory[tuple[float, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.memory < 1:
            raise ValueError(f"memory must be at least 1, got {self.memory}")
        self._predicted = PredictionMemory(self.memory)

    @property
    def state(self) -> DriftState:
        return self.monitor.state

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        from_model = self.model.predict(features)
        from_baseline = self.baseline.predict(features)
        self._predicted.remember(features, (from_model.p50, from_baseline.p50))
        return from_model if self.monitor.state.source is PredictionSource.MODEL else from_baseline

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        predicted = self._predicted.recall(features)
        if predicted is None:  # never predicted here, or forgotten: ask both again
            predicted = (self.model.predict(features).p50, self.baseline.predict(features).p50)
        switch = self.monitor.record(predicted[0], predicted[1], actual_tokens)
        self.model.observe(features, actual_tokens)
        self.baseline.observe(features, actual_tokens)
        if switch is not None and self.on_switch is not None:
            self.on_switch(switch)


def guard_learned(
    learned: OutputLengthPredictor,
    correction: CorrectionSettings | None = DEFAULT_CORRECTION,
    drift: DriftSettings | None = DEFAULT_DRIFT,
    on_switch: Callable[[SourceSwitch], None] | None = None,
) -> GuardedPredictor:
    """The production stack around a learned predictor: online correction (skipped when
    ``correction`` is None) under a drift guard (measuring only when ``drift`` is None)."""
    model: OutputLengthPredictor = learned
    if correction is not None:
        model = OnlineCorrectedPredictor(learned, correction)
    monitor = DriftMonitor(drift if drift is not None else DriftSettings(switching=False))
    return GuardedPredictor(model, RunningAveragePredictor(), monitor, on_switch)
