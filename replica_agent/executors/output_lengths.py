"""How long a cost-model replica's answers are, so requests end like real ones.

A cost-model executor computes no logits, so it cannot decide when an answer is done. A real model
stops when it samples EOS; :class:`LengthScriptedExecutor` does the same at a length drawn per request
from an :class:`OutputLengthDistribution` (unless the request set ``ignore_eos``, where ``max_tokens``
decides, as on a real engine). Draws are a pure function of (seed, request id), so runs repeat.

Spec strings: ``lognormal:median=151,sigma=0.86`` (the default: fitted to the output lengths of the
Azure 2023 conversation trace, median 129 / mean 211 tokens), ``fixed:N``, ``uniform:LOW,HIGH``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import xxhash

from replica_agent.engine.step import StepPlan, StepResult
from replica_agent.executors.base import Executor

DEFAULT_OUTPUT_LENGTHS = "lognormal:median=151,sigma=0.86"


class LengthKind(StrEnum):
    LOGNORMAL = "lognormal"
    FIXED = "fixed"
    UNIFORM = "uniform"


@dataclass(frozen=True, slots=True)
class OutputLengthDistribution:
    kind: LengthKind
    first: float
    second: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> OutputLengthDistribution:
        kind_text, _, args = spec.partition(":")
        try:
            kind = LengthKind(kind_text.strip())
        except ValueError:
            choices = ", ".join(k.value for k in LengthKind)
            raise ValueError(f"unknown output length distribution {kind_text!r} (choose {choices})") from None
        values = [part.split("=", 1)[-1] for part in args.split(",") if part.strip()]
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"output length spec {spec!r} has a non-numeric parameter") from None
        expected = 1 if kind is LengthKind.FIXED else 2
        if len(numbers) != expected:
            raise ValueError(f"output length spec {spec!r} needs {expected} parameter(s)")
        dist = cls(kind, numbers[0], numbers[1] if expected == 2 else 0.0, seed)
        dist.validate()
        return dist

    def validate(self) -> None:
        if self.first < 1:
            raise ValueError(f"{self.kind.value} output lengths need a first parameter ≥ 1, got {self.first}")
        if self.kind is LengthKind.LOGNORMAL and self.second < 0:
            raise ValueError(f"lognormal sigma must be ≥ 0, got {self.second}")
        if self.kind is LengthKind.UNIFORM and self.second < self.first:
            raise ValueError(f"uniform output lengths need LOW ≤ HIGH, got {self.first}, {self.second}")

    def sample(self, request_id: str) -> int:
        """The natural answer length of ``request_id`` (at least 1 token)."""
        rng = np.random.default_rng(xxhash.xxh3_64_intdigest(request_id.encode(), seed=self.seed))
        if self.kind is LengthKind.FIXED:
            value = self.first
        elif self.kind is LengthKind.UNIFORM:
            value = float(rng.integers(int(self.first), int(self.second) + 1))
        else:
            value = float(rng.lognormal(math.log(self.first), self.second))
        return max(1, round(value))


class LengthScriptedExecutor:
    """Wraps an executor and samples EOS when a request reaches its drawn natural length."""

    def __init__(self, inner: Executor, lengths: OutputLengthDistribution, eos_token_id: int) -> None:
        self.inner = inner
        self.lengths = lengths
        self.eos_token_id = eos_token_id
        self._eos_position: dict[str, int] = {}

    def expect(self, request_id: str, prompt_tokens: int, max_tokens: int, ignore_eos: bool) -> int | None:
        """Register a request before it runs; returns its natural length (None: runs to max_tokens)."""
        if ignore_eos:
            return None
        natural = self.lengths.sample(request_id)
        if natural < max_tokens:
            # The token sampled at sequence position p is output number p - prompt_tokens + 1.
            self._eos_position[request_id] = prompt_tokens + natural
            return natural
        return None

    def execute(self, plan: StepPlan) -> StepResult:
        result = self.inner.execute(plan)
        if not self._eos_position:
            return result
        sampled = dict(result.sampled_token_ids)
        for chunk in plan.chunks:
            if chunk.samples and self._eos_position.get(chunk.request_id) == chunk.end + 1:
                sampled[chunk.request_id] = self.eos_token_id
        return StepResult(sampled_token_ids=sampled, duration_s=result.duration_s)

    def release(self, request_id: str) -> None:
        self._eos_position.pop(request_id, None)
        self.inner.release(request_id)
