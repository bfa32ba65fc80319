"""``DriftMonitor``: does the learned predictor still beat the prediction-free rule?

Over a rolling window of finished requests it keeps (model's prediction, baseline's prediction,
actual length), the baseline being the per-model running average. Every ``evaluate_every``
records, once ``min_samples`` are in, it compares:

- the error of each source: the mean absolute log error ``|log((1 + predicted) / (1 + actual))|``,
  which weighs a 2× miss alike at 10 and at 1000 tokens;
- the model's Kendall rank correlation τ with the actual lengths (what length-aware scheduling
  and routing need: which request is longer).

The model stays in use while its error is below the baseline's by ``error_margin`` (a fraction) and
its τ is at least ``tau_floor``. Once it falls back to the baseline, it comes back only when it
clears both bars by ``hysteresis`` more, so a model hovering at a threshold does not flap. The
monitor is pure: :meth:`DriftMonitor.record` returns the switch, the caller logs it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np


class PredictionSource(StrEnum):
    MODEL = "model"
    BASELINE = "running_average"


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """``window`` 200 finished requests, judged every ``evaluate_every`` 25 once ``min_samples``
    100 are in; ``error_margin`` 0.02, ``tau_floor`` 0.1, ``hysteresis`` 0.05 (added to both to come
    back); ``switching`` False only measures. (A judgement costs about a millisecond, mostly
    scipy's Kendall τ: hence not at every request.)"""

    window: int = 200
    min_samples: int = 100
    evaluate_every: int = 25
    error_margin: float = 0.02
    tau_floor: float = 0.1
    hysteresis: float = 0.05
    switching: bool = True

    def __post_init__(self) -> None:
        if self.window < 2 or not 2 <= self.min_samples <= self.window:
            raise ValueError(
                f"need 2 <= min_samples <= window, got min_samples {self.min_samples}, window {self.window}"
            )
        if self.evaluate_every < 1:
            raise ValueError(f"evaluate_every must be at least 1, got {self.evaluate_every}")
        if not 0.0 <= self.error_margin < 1.0:
            raise ValueError(f"error_margin must be in [0, 1), got {self.error_margin}")
        if not -1.0 <= self.tau_floor <= 1.0:
            raise ValueError(f"tau_floor must be in [-1, 1], got {self.tau_floor}")
        if not 0.0 <= self.hysteresis < 1.0 - self.error_margin:
            raise ValueError(f"hysteresis must be in [0, 1 - error_margin), got {self.hysteresis}")


@dataclass(frozen=True, slots=True)
class DriftState:
    """The source in use, the requests in the window, and the last evaluation (None before the first)."""

    source: PredictionSource
    samples: int
    kendall_tau: float | None = None
    model_error: float | None = None
    baseline_error: float | None = None
    switches: int = 0


@dataclass(frozen=True, slots=True)
class SourceSwitch:
    previous: PredictionSource
    state: DriftState  # after the switch
    reason: str


class DriftMonitor:
    def __init__(
        self, settings: DriftSettings | None = None, start: PredictionSource = PredictionSource.MODEL
    ) -> None:
        self.settings = settings or DriftSettings()
        window = self.settings.window
        self._model: deque[float] = deque(maxlen=window)
        self._baseline: deque[float] = deque(maxlen=window)
        self._actual: deque[float] = deque(maxlen=window)
        self._since_evaluation = 0
        self._state = DriftState(start, 0)
        # Imported by the first monitor, not with this module: scipy.stats takes most of a second to
        # load, which a router on the running average (importing the module for its types) never needs.
        from scipy.stats import kendalltau

        self._kendall_tau = kendalltau

    @property
    def state(self) -> DriftState:
        """The source in use, the window's current size and the last evaluation."""
        return replace(self._state, samples=len(self._actual))

    def record(
        self, model_predicted: float, baseline_predicted: float, actual_tokens: int
    ) -> SourceSwitch | None:
        """Add one finished request; the switch of source it caused, if any."""
        if actual_tokens < 0 or model_predicted < 0 or baseline_predicted < 0:
            raise ValueError("predicted and actual lengths cannot be negative")
        self._model.append(model_predicted)
        self._baseline.append(baseline_predicted)
        self._actual.append(float(actual_tokens))
        self._since_evaluation += 1
        samples = len(self._actual)
        if samples < self.settings.min_samples or self._since_evaluation < self.settings.evaluate_every:
            return None
        self._since_evaluation = 0
        return self._evaluate(samples)

    def _evaluate(self, samples: int) -> SourceSwitch | None:
        actual = np.log1p(np.fromiter(self._actual, float, samples))
        model = np.fromiter(self._model, float, samples)
        model_error = float(np.mean(np.abs(np.log1p(model) - actual)))
        baseline_error = float(
            np.mean(np.abs(np.log1p(np.fromiter(self._baseline, float, samples)) - actual))
        )
        tau = float(self._kendall_tau(model, actual).statistic)
        tau = 0.0 if math.isnan(tau) else tau  # constant predictions rank nothing
        previous = self._state
        measured = DriftState(previous.source, samples, tau, model_error, baseline_error, previous.switches)
        settings = self.settings
        extra = 0.0 if previous.source is PredictionSource.MODEL else settings.hysteresis
        error_bar = baseline_error * (1.0 - settings.error_margin - extra)
        helps = model_error <= error_bar and tau >= settings.tau_floor + extra
        wanted = PredictionSource.MODEL if helps else PredictionSource.BASELINE
        if wanted is previous.source or not settings.switching:
            self._state = measured
            return None
        self._state = DriftState(wanted, samples, tau, model_error, baseline_error, previous.switches + 1)
        reason = (
            f"model log error {model_error:.3f} vs running average {baseline_error:.3f} "
            f"(bar {error_bar:.3f}), Kendall tau {tau:.3f} (floor {settings.tau_floor + extra:.3f}) "
            f"over the last {samples} requests"
        )
        return SourceSwitch(previous.source, self._state, reason)
