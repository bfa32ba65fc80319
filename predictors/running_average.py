"""``RunningAveragePredictor``: per model, an exponentially weighted running fit of the observed
output lengths.

The mean is a running mean of the lengths; p50 and p90 come from a running log-normal fit (mean and
variance of ``log(1 + tokens)``). Until a model has been observed, a prior answers: by default the
log-normal (median 151 tokens, sigma 0.86) fitted to public chat traces, the simulator's default
answer-length distribution too. Each observation weighs ``max(smoothing, 1 / (n + prior_weight))``:
the first few are averaged with the prior, later ones form an exponential moving average that
follows drift. Predictions are capped by the request's ``max_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from predictors.base import LengthEstimate, PredictorFeatures

Z_90 = 1.2815515655446004  # standard normal 90th percentile


@dataclass(slots=True)
class _RunningFit:
    observations: int
    mean_tokens: float
    log_mean: float
    log_variance: float

    def update(self, tokens: int, weight: float) -> None:
        self.observations += 1
        self.mean_tokens += weight * (tokens - self.mean_tokens)
        difference = math.log1p(tokens) - self.log_mean
        increment = weight * difference
        self.log_mean += increment
        self.log_variance = (1.0 - weight) * (self.log_variance + difference * increment)


@dataclass(eq=False, slots=True)
class RunningAveragePredictor:
    """``prior_median`` 151 and ``prior_sigma`` 0.86 (tokens, log-normal), ``prior_weight`` 1 (the
    prior counts as that many observations), ``smoothing`` 0.05 (the weight of a new observation
    once the prior has faded)."""

    prior_median: float = 151.0
    prior_sigma: float = 0.86
    prior_weight: float = 1.0
    smoothing: float = 0.05
    _fits: dict[str, _RunningFit] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.prior_median >= 0 and self.prior_sigma >= 0 and self.prior_weight >= 0):
            raise ValueError("prior_median, prior_sigma and prior_weight must be non-negative")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        fit = self._fits.get(features.model) or self._prior()
        sigma = math.sqrt(max(0.0, fit.log_variance))
        p50 = math.expm1(fit.log_mean)
        p90 = math.expm1(fit.log_mean + Z_90 * sigma)
        mean = fit.mean_tokens
        if features.max_tokens > 0:
            cap = float(features.max_tokens)
            mean, p50, p90 = min(mean, cap), min(p50, cap), min(p90, cap)
        return LengthEstimate(max(0.0, mean), max(0.0, p50), max(0.0, p90))

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens cannot be negative, got {actual_tokens}")
        fit = self._fits.get(features.model)
        if fit is None:
            fit = self._fits[features.model] = self._prior()
        weight = max(self.smoothing, 1.0 / (fit.observations + 1 + self.prior_weight))
        fit.update(actual_tokens, weight)

    def observations(self, model: str) -> int:
        fit = self._fits.get(model)
        return fit.observations if fit is not None else 0

    def _prior(self) -> _RunningFit:
        variance = self.prior_sigma**2
        mean = self.prior_median * math.exp(variance / 2)
        return _RunningFit(0, mean, math.log1p(self.prior_median), variance)
