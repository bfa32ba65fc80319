"""``OnlineCorrectedPredictor``: any output-length predictor, rescaled by what finished requests
showed it got wrong.

For every finished request the log ratio ``log(actual / predicted p50)`` (both floored at one
token) joins the last ``window`` ratios kept per model and per (model, tenant). Their median is
what the predicted median is off by: the median, not the mean, because a well-calibrated p50 has
half its ratios on each side however skewed their spread. The estimate is multiplied by
``exp(shift)``, where the shift shrinks each median toward its parent by the number ``n`` of ratios
behind it: a tenant's weighs ``n / (n + prior_observations)`` against the model's shift, and the
model's weighs ``n / (n + prior_observations)`` against no correction. So the correction fades in
as evidence accumulates, a tenant with few requests borrows its model's, and the window lets it
follow drift. The shift is bounded by ``±log(max_factor)``.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from predictors.base import LengthEstimate, OutputLengthPredictor, PredictorFeatures

Remembered = TypeVar("Remembered")


@dataclass(frozen=True, slots=True)
class CorrectionSettings:
    """``prior_observations`` 20 (how many ratios a median needs to weigh as much as its parent),
    ``window`` 200 (ratios kept per model and per tenant), ``max_factor`` 4 (the correction stays
    within ×1/4..×4), ``memory`` 4096 (predictions remembered until their request finishes)."""

    prior_observations: float = 20.0
    window: int = 200
    max_factor: float = 4.0
    memory: int = 4096

    def __post_init__(self) -> None:
        if not (math.isfinite(self.prior_observations) and self.prior_observations >= 0):
            raise ValueError(
                f"prior_observations must be finite and non-negative, got {self.prior_observations}"
            )
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if not (math.isfinite(self.max_factor) and self.max_factor >= 1.0):
            raise ValueError(f"max_factor must be finite and at least 1, got {self.max_factor}")
        if self.memory < 1:
            raise ValueError(f"memory must be at least 1, got {self.memory}")


class PredictionMemory(Generic[Remembered]):
    """What was predicted for each request still in flight, keyed by its features; the oldest
    entries are forgotten beyond ``capacity`` (requests that never report back)."""

    __slots__ = ("_capacity", "_entries")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: dict[PredictorFeatures, Remembered] = {}

    def remember(self, features: PredictorFeatures, value: Remembered) -> None:
        entries = self._entries
        entries.pop(features, None)  # re-inserted at the end: the newest
        entries[features] = value
        if len(entries) > self._capacity:
            del entries[next(iter(entries))]

    def recall(self, features: PredictorFeatures) -> Remembered | None:
        return self._entries.pop(features, None)

    def __len__(self) -> int:
        return len(self._entries)


class _RecentLogRatios:
    """The last log ratios of one model or tenant, and their median (kept current on each add)."""

    __slots__ = ("median", "ratios")

    def __init__(self, window: int) -> None:
        self.ratios: deque[float] = deque(maxlen=window)
        self.median = 0.0

    def add(self, log_ratio: float) -> None:
        self.ratios.append(log_ratio)
        self.median = statistics.median(self.ratios)

    def shrunk(self, parent: float, prior_observations: float) -> float:
        n = len(self.ratios)
        weight = n / (n + prior_observations) if n + prior_observations > 0 else 1.0
        return weight * self.median + (1.0 - weight) * parent


def scale_estimate(estimate: LengthEstimate, factor: float, max_tokens: int) -> LengthEstimate:
    """``estimate`` times ``factor`` (bins' bounds too, merged where rounding makes them equal),
    the mean and quantiles capped by ``max_tokens`` when it is positive."""
    cap = float(max_tokens) if max_tokens > 0 else math.inf
    bins: dict[int, float] = {}
    for upper, probability in estimate.bins:
        bound = max(1, round(upper * factor))
        bins[bound] = bins.get(bound, 0.0) + probability
    return LengthEstimate(
        mean=min(estimate.mean * factor, cap),
        p50=min(estimate.p50 * factor, cap),
        p90=min(estimate.p90 * factor, cap),
        bins=tuple(sorted(bins.items())),
    )


@dataclass(eq=False, slots=True)
class OnlineCorrectedPredictor:
    """``inner``'s estimates times a correction learned online (see the module docstring)."""

    inner: OutputLengthPredictor
    settings: CorrectionSettings = field(default_factory=CorrectionSettings)
    _by_model: dict[str, _RecentLogRatios] = field(default_factory=dict, init=False, repr=False)
    _by_tenant: dict[tuple[str, str], _RecentLogRatios] = field(default_factory=dict, init=False, repr=False)
    _predicted: PredictionMemory[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._predicted = PredictionMemory(self.settings.memory)

    def factor(self, model: str, tenant: str | None = None) -> float:
        """The multiplier applied now to ``model``'s (and ``tenant``'s) estimates."""
        prior = self.settings.prior_observations
        by_model = self._by_model.get(model)
        shift = 0.0 if by_model is None else by_model.shrunk(0.0, prior)
        by_tenant = None if tenant is None else self._by_tenant.get((model, tenant))
        if by_tenant is not None:
            shift = by_tenant.shrunk(shift, prior)
        bound = math.log(self.settings.max_factor)
        return math.exp(min(bound, max(-bound, shift)))

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        raw = self.inner.predict(features)
        self._predicted.remember(features, raw.p50)
        factor = self.factor(features.model, features.tenant)
        return raw if factor == 1.0 else scale_estimate(raw, factor, features.max_tokens)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens cannot be negative, got {actual_tokens}")
        predicted = self._predicted.recall(features)
        if predicted is None:  # never predicted here, or forgotten: ask again
            predicted = self.inner.predict(features).p50
        log_ratio = math.log(max(1.0, float(actual_tokens)) / max(1.0, predicted))
        window = self.settings.window
        by_model = self._by_model.get(features.model)
        if by_model is None:
            by_model = self._by_model[features.model] = _RecentLogRatios(window)
        by_model.add(log_ratio)
        if features.tenant is not None:
            key = (features.model, features.tenant)
            by_tenant = self._by_tenant.get(key)
            if by_tenant is None:
                by_tenant = self._by_tenant[key] = _RecentLogRatios(window)
            by_tenant.add(log_ratio)
        self.inner.observe(features, actual_tokens)
