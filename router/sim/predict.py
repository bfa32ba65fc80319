"""Output-length predictors for simulated routing, chosen by a spec string.

- ``none``: the production default, a running average of finished requests' lengths;
- ``model:<dir>``: the learned predictor saved in ``<dir>``, as the router runs it (online
  correction under the drift guard that falls back to the running average);
- ``model-raw:<dir>``: that learned predictor alone (a bare ``<dir>`` means ``model:<dir>``);
- ``oracle``: every request's true output length, as a point estimate;
- ``noisy:<rel_err>``: the true length times a lognormal(0, rel_err) error, drawn once per request
  from the seed and the request id (so runs are deterministic and every policy sees the same
  errors). The estimate is calibrated to its error: its median is the noisy value, its mean and
  90th percentile those of the lognormal around it. ``noisy:0`` is ``oracle``.

The simulated engines run every request to its trace length (``ignore_eos``), so the true output
length is the request's ``max_tokens``. Production predictors see the request's prompt text when
the trace has it (``prompts``, by request id).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from predictors.base import OutputLengthPredictor, PredictorFeatures
from predictors.guarded import guard_learned
from predictors.running_average import RunningAveragePredictor
from predictors.saved import PredictorLoadError, load_predictor, read_metadata
from protos.routing import LengthEstimate
from replica_agent.engine.request import RequestSpec

PREDICTOR_SPECS = ("none", "model:<dir>", "model-raw:<dir>", "oracle", "noisy:<rel_err>")
MODEL_SPECS = ("model", "model-raw")
_P90_Z = 1.2815515655446004  # the standard normal's 90th percentile


class PredictorSpecError(ValueError):
    pass


class RequestPredictor(Protocol):
    def prompt_text(self, request_id: str) -> str | None:
        """The request's prompt text, when the predictor may read it."""
        ...

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
    prompts: Mapping[str, str] = field(default_factory=dict)

    def prompt_text(self, request_id: str) -> str | None:
        return self.prompts.get(request_id)

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

    def prompt_text(self, request_id: str) -> str | None:
        return None  # it knows the answer already

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
    if Path(text).expanduser().is_dir():  # a bare directory: the model, as the router runs it
        return f"model:{_model_dir(text)}"
    name, _, value = text.partition(":")
    if name in MODEL_SPECS:
        return f"{name}:{_model_dir(value)}"
    if name == "noisy":
        try:
            rel_err = float(value)
        except ValueError:
            raise PredictorSpecError(f"noisy:<rel_err> needs a number, got {value!r}") from None
        TrueLengthPredictor(rel_err)
        return f"noisy:{rel_err:g}"
    raise PredictorSpecError(f"unknown predictor {spec!r}; choose from {', '.join(PREDICTOR_SPECS)}")


def _model_dir(value: str) -> Path:
    """A predictor directory whose metadata reads; its model is loaded by :func:`build_predictor`."""
    if not value.strip():
        raise PredictorSpecError("model:<dir> needs the directory of a saved predictor")
    directory = Path(value.strip()).expanduser().resolve()
    try:
        read_metadata(directory)
    except PredictorLoadError as error:
        raise PredictorSpecError(str(error)) from None
    return directory


def build_predictor(spec: str, seed: int = 0, prompts: Mapping[str, str] | None = None) -> RequestPredictor:
    """A fresh predictor for one run; ``prompts`` maps request ids to their prompt text."""
    canonical = parse_predictor(spec)
    prompts = prompts or {}
    if canonical == "none":
        return FeaturePredictor(prompts=prompts)
    name, _, value = canonical.partition(":")
    if name in MODEL_SPECS:
        try:
            learned = load_predictor(Path(value))
        except PredictorLoadError as error:
            raise PredictorSpecError(str(error)) from None
        return FeaturePredictor(learned if name == "model-raw" else guard_learned(learned), prompts)
    if canonical == "oracle":
        return TrueLengthPredictor(0.0, seed)
    return TrueLengthPredictor(float(canonical.partition(":")[2]), seed)
