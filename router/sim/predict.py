"""Output-length predictors for simulated routing, chosen by a spec string.

- ``none``: the production default, a running average of finished requests' lengths;
- ``oracle``: every request's true output length, as a point estimate;
- ``noisy:<rel_err>``: the true length times a lognormal(0, rel_err) error, drawn once per request
  from the seed and the request id (so runs are deterministic and every policy sees the same
  errors). The estimate is calibrated to its error: its median is the noisy value, its mean and
  90th percentile those of the lognormal around it. ``noisy:0`` is ``oracle``.

The simulated engines run every request to its trace length (``ignore_eos``), so the true output
length is the request's ``max_tokens``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from predictors.base import OutputLengthPredictor, PredictorFeatures
from predictors.running_average import RunningAveragePredictor
from protos.routing import LengthEstimate
from replica_agent.engine.request import RequestSpec

PREDICTOR_SPECS = ("none", "oracle", "noisy:<rel_err>")
_P90_Z = 1.2815515655446004  # the standard normal's 90th percentile


class PredictorSpecError(ValueError):
    pass


class RequestPredictor(Protocol):
    def estimate(self, spec: RequestSpec, features: PredictorFeatures) -> LengthEstimate:
        """The output-length estimate the router attaches to the request."""
        ...

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        """Learn from a finished request."""
        ...


@dataclass(slots=True)
class FeaturePredictor:
    """A production predictor, which sees only what the router sees."""

    predictor: OutputLengthPredictor = field(default_factory=RunningAveragePredictor)

    def estimate(self, spec: RequestSpec, features: PredictorFeatures) -> LengthEstimate:
        return self.predictor.predict(features)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        self.predictor.observe(features, actual_tokens)


@dataclass(frozen=True, slots=True)
class TrueLengthPredictor:
    """The true output length times a per-request lognormal(0, ``rel_err``) error."""

    rel_err: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rel_err) and self.rel_err >= 0):
            raise PredictorSpecError(f"rel_err must be finite and non-negative, got {self.rel_err}")

    def estimate(self, spec: RequestSpec, features: PredictorFeatures) -> LengthEstimate:
        true_tokens = float(spec.params.max_tokens)
        if self.rel_err == 0:
            return LengthEstimate.point(true_tokens)
        error = random.Random(f"{self.seed}/{spec.request_id}").lognormvariate(0.0, self.rel_err)
        median = true_tokens * error
        return LengthEstimate(
            mean=median * math.exp(self.rel_err**2 / 2),
            p50=median,
            p90=median * math.exp(_P90_Z * self.rel_err),
        )

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        return None


def parse_predictor(spec: str) -> str:
    """The canonical form of a predictor spec; PredictorSpecError when it is not one."""
    text = spec.strip()
    if text in ("none", "oracle"):
        return text
    name, _, value = text.partition(":")
    if name == "noisy":
        try:
            rel_err = float(value)
        except ValueError:
            raise PredictorSpecError(f"noisy:<rel_err> needs a number, got {value!r}") from None
        TrueLengthPredictor(rel_err)
        return f"noisy:{rel_err:g}"
    raise PredictorSpecError(f"unknown predictor {spec!r}; choose from {', '.join(PREDICTOR_SPECS)}")


def build_predictor(spec: str, seed: int = 0) -> RequestPredictor:
    """A fresh predictor for one run."""
    canonical = parse_predictor(spec)
    if canonical == "none":
        return FeaturePredictor()
    if canonical == "oracle":
        return TrueLengthPredictor(0.0, seed)
    return TrueLengthPredictor(float(canonical.partition(":")[2]), seed)
