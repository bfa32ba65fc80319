"""The output-length predictor contract (DESIGN.md section 4.7).

The router asks for a prediction before it routes (``predict``) and reports the true length when
the request finishes (``observe``), so predictors can learn online. Predictors are pure and
synchronous; training and model files live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protos.routing import LengthEstimate, RoutingRequest

__all__ = ["LengthEstimate", "OutputLengthPredictor", "PredictorFeatures"]


@dataclass(frozen=True, slots=True)
class PredictorFeatures:
    """What a predictor may look at: the request's shape, who sent it and, optionally, its text."""

    model: str
    prompt_tokens: int
    max_tokens: int
    tenant: str | None = None
    user: str | None = None
    prompt_text: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.max_tokens < 0:
            raise ValueError(
                "prompt_tokens and max_tokens cannot be negative, "
                f"got {self.prompt_tokens} and {self.max_tokens}"
            )

    @classmethod
    def from_request(
        cls, request: RoutingRequest, tenant: str | None = None, prompt_text: str | None = None
    ) -> PredictorFeatures:
        return cls(
            request.model, request.prompt_tokens, request.max_tokens, tenant, request.user, prompt_text
        )


class OutputLengthPredictor(Protocol):
    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        """The predicted output length (mean and quantiles, optionally bins), capped by max_tokens."""
        ...

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        """Learn from a finished request that produced ``actual_tokens`` output tokens."""
        ...
