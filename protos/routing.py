"""What the router knows about a request when it picks a replica (DESIGN.md section 4.3)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LengthEstimate:
    """A predicted output length: mean, quantiles and optionally a distribution over length bins.

    ``bins`` holds ``(upper_bound_tokens, probability)`` pairs in increasing order of bound; the
    probabilities sum to 1 when present.
    """

    mean: float
    p50: float
    p90: float
    bins: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.mean < 0 or self.p50 < 0 or self.p90 < 0:
            raise ValueError(f"length estimates cannot be negative: {self}")

    @classmethod
    def point(cls, tokens: float) -> LengthEstimate:
        return cls(tokens, tokens, tokens)


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    request_id: str
    model: str
    prompt_tokens: int
    block_hashes: tuple[int, ...]
    max_tokens: int
    predicted: LengthEstimate | None = None
    user: str | None = None
    session: str | None = None
    slo_class: str = "default"
    arrival_time: float = 0.0
    priority: int = 0
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def expected_output_tokens(self) -> float:
        """The predicted mean, capped by ``max_tokens``; ``max_tokens`` itself without a prediction."""
        if self.predicted is None:
            return float(self.max_tokens)
        return min(float(self.max_tokens), self.predicted.mean)
