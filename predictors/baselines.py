"""Baselines the learned length models are measured against.

* :class:`GlobalMeanPredictor` — one answer for every request (the training mean, median and p90).
* :class:`GroupedRunningAverage` — a :class:`RunningAveragePredictor` per model (or per model and
  tenant), each started from a log-normal prior fitted to that group's training lengths; it keeps
  learning from ``observe`` like the router's default predictor.
* :class:`LengthRegression` — least squares of ``log(1 + output)`` on ``log(1 + prompt_tokens)``
  with an intercept per model; p50/p90/mean from the log-normal residual.

All are pure and cap their estimates by the request's ``max_tokens`` (0 means no cap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from predictors.base import LengthEstimate, PredictorFeatures
from predictors.running_average import Z_90, RunningAveragePredictor


def capped_estimate(
    mean: float, p50: float, p90: float, max_tokens: int, bins: tuple[tuple[int, float], ...] = ()
) -> LengthEstimate:
    """A non-negative estimate with p90 ≥ p50, every value at most ``max_tokens`` when it is set; bins
    past the cap fold into the bin that holds it."""
    mean, p50 = max(0.0, mean), max(0.0, p50)
    p90 = max(p50, p90)
    if max_tokens > 0:
        cap = float(max_tokens)
        mean, p50, p90 = min(mean, cap), min(p50, cap), min(p90, cap)
        if bins and bins[-1][0] > max_tokens:
            kept = [(bound, probability) for bound, probability in bins if bound < max_tokens]
            first_over = next(bound for bound, _ in bins if bound >= max_tokens)
            folded = sum(probability for bound, probability in bins if bound >= max_tokens)
            bins = (*kept, (first_over, folded))
    return LengthEstimate(mean, p50, p90, bins)


def _log_lengths(lengths: Sequence[int]) -> np.ndarray:
    values = np.asarray(lengths, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot fit on zero requests")
    if (values < 0).any():
        raise ValueError("output lengths cannot be negative")
    return np.log1p(values)


@dataclass(frozen=True, slots=True)
class GlobalMeanPredictor:
    kind: ClassVar[str] = "mean"
    mean: float
    p50: float
    p90: float

    @classmethod
    def fit(cls, lengths: Sequence[int]) -> GlobalMeanPredictor:
        _log_lengths(lengths)
        values = np.asarray(lengths, dtype=np.float64)
        return cls(float(values.mean()), float(np.quantile(values, 0.5)), float(np.quantile(values, 0.9)))

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        return capped_estimate(self.mean, self.p50, self.p90, features.max_tokens)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        """Fixed: learns nothing."""

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90}, {}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> GlobalMeanPredictor:
        return cls(float(params["mean"]), float(params["p50"]), float(params["p90"]))


@dataclass(frozen=True, slots=True)
class GroupPrior:
    """A group's training lengths as a log-normal: median, sigma (of ``log(1 + tokens)``) and count."""

    median: float
    sigma: float
    observations: int

    @classmethod
    def fit(cls, lengths: Sequence[int]) -> GroupPrior:
        logs = _log_lengths(lengths)
        return cls(float(np.expm1(logs.mean())), float(logs.std()), len(logs))


@dataclass(frozen=True, slots=True)
class GroupedRunningAverage:
    """Running averages keyed by model (``by_tenant`` False) or by model and tenant; an unseen group
    starts from ``fallback``, the prior fitted to all training lengths."""

    kind: ClassVar[str] = "running_average"
    priors: dict[str, GroupPrior]
    fallback: GroupPrior
    by_tenant: bool = False
    smoothing: float = 0.05
    _running: dict[str, RunningAveragePredictor] = field(default_factory=dict, init=False, repr=False)

    @staticmethod
    def group_key(features: PredictorFeatures, by_tenant: bool) -> str:
        return f"{features.model}\x1f{features.tenant or ''}" if by_tenant else features.model

    @classmethod
    def fit(
        cls, requests: Sequence[PredictorFeatures], lengths: Sequence[int], by_tenant: bool = False
    ) -> GroupedRunningAverage:
        if len(requests) != len(lengths):
            raise ValueError(f"{len(requests)} requests but {len(lengths)} lengths")
        groups: dict[str, list[int]] = {}
        for request, length in zip(requests, lengths, strict=True):
            groups.setdefault(cls.group_key(request, by_tenant), []).append(length)
        priors = {key: GroupPrior.fit(values) for key, values in sorted(groups.items())}
        return cls(priors, GroupPrior.fit(lengths), by_tenant)

    def _predictor_for(self, features: PredictorFeatures) -> RunningAveragePredictor:
        key = self.group_key(features, self.by_tenant)
        running = self._running.get(key)
        if running is None:
            prior = self.priors.get(key, self.fallback)
            running = RunningAveragePredictor(
                prior_median=prior.median,
                prior_sigma=prior.sigma,
                prior_weight=float(prior.observations),
                smoothing=self.smoothing,
            )
            self._running[key] = running
        return running

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        return self._predictor_for(features).predict(features)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        self._predictor_for(features).observe(features, actual_tokens)

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        def prior(p: GroupPrior) -> list[float]:
            return [p.median, p.sigma, p.observations]

        params = {
            "by_tenant": self.by_tenant,
            "smoothing": self.smoothing,
            "fallback": prior(self.fallback),
            "groups": {key: prior(value) for key, value in self.priors.items()},
        }
        return params, {}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> GroupedRunningAverage:
        def prior(values: list[float]) -> GroupPrior:
            median, sigma, count = values
            return GroupPrior(float(median), float(sigma), int(count))

        groups = {str(key): prior(value) for key, value in params["groups"].items()}
        return cls(groups, prior(params["fallback"]), bool(params["by_tenant"]), float(params["smoothing"]))


@dataclass(frozen=True, eq=False, slots=True)
class LengthRegression:
    """``log(1 + output) = intercept[model] + slope · log(1 + prompt_tokens) + noise(sigma)``; an
    unseen model gets the average intercept."""

    kind: ClassVar[str] = "length_regression"
    models: tuple[str, ...]
    intercepts: np.ndarray  # (len(models),)
    slope: float
    sigma: float

    @classmethod
    def fit(
        cls, requests: Sequence[PredictorFeatures], lengths: Sequence[int], ridge: float = 1e-3
    ) -> LengthRegression:
        if len(requests) != len(lengths):
            raise ValueError(f"{len(requests)} requests but {len(lengths)} lengths")
        target = _log_lengths(lengths)
        models = tuple(sorted({r.model for r in requests}))
        index = {model: i for i, model in enumerate(models)}
        design = np.zeros((len(requests), len(models) + 1))
        for row, request in enumerate(requests):
            design[row, index[request.model]] = 1.0
            design[row, -1] = math.log1p(request.prompt_tokens)
        gram = design.T @ design + ridge * np.eye(design.shape[1])
        coefficients = np.linalg.solve(gram, design.T @ target)
        residual = target - design @ coefficients
        return cls(models, coefficients[:-1], float(coefficients[-1]), float(residual.std()))

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        try:
            intercept = float(self.intercepts[self.models.index(features.model)])
        except ValueError:
            intercept = float(self.intercepts.mean())
        center = intercept + self.slope * math.log1p(features.prompt_tokens)
        return capped_estimate(
            math.expm1(center + self.sigma**2 / 2),
            math.expm1(center),
            math.expm1(center + Z_90 * self.sigma),
            features.max_tokens,
        )

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        """Fixed: learns nothing."""

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"models": list(self.models), "slope": self.slope, "sigma": self.sigma}, {
            "intercepts": self.intercepts
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LengthRegression:
        models = tuple(str(model) for model in params["models"])
        intercepts = np.asarray(arrays["intercepts"], dtype=np.float64)
        if intercepts.shape != (len(models),):
            raise ValueError(f"{len(models)} models but {intercepts.shape} intercepts")
        return cls(models, intercepts, float(params["slope"]), float(params["sigma"]))
