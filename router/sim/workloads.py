"""Synthetic workloads and re-timing of traces.

Arrival processes (each takes a mean rate in requests/s, a count or a duration, and a seed):

- Poisson: exponential inter-arrival times (coefficient of variation 1);
- Gamma: Gamma-distributed inter-arrival times with ``shape`` k and the same mean, so their
  coefficient of variation is ``1/sqrt(k)``: k < 1 is bursty, k = 1 is Poisson, k > 1 is smoother;
- ServeGen: Poisson arrivals with the pooled ServeGen client length distributions;
- prompted: Poisson arrivals of requests resampled whole (prompt text included) from a list, such
  as AlpacaEval instructions with a real model's answer lengths.

Request lengths come from a :class:`LengthSource`: :class:`PmfLengths` draws prompt and output
lengths independently from two distributions (such as ServeGen's), :class:`TraceLengths` resamples
(prompt, output) pairs of a given trace with replacement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from router.sim.traces import TraceRequest, servegen_length_pmfs

LengthArrays = tuple[np.ndarray, np.ndarray]  # prompt tokens, output tokens


class LengthSource(Protocol):
    def sample(self, count: int, rng: np.random.Generator) -> LengthArrays:
        """``count`` prompt lengths and ``count`` output lengths, all at least 1."""
        ...


@dataclass(frozen=True, slots=True)
class PmfLengths:
    """Independent prompt and output lengths from two probability mass functions {tokens: weight}."""

    prompt_pmf: Mapping[int, float]
    output_pmf: Mapping[int, float]

    @classmethod
    def from_servegen(cls, directory: Path) -> PmfLengths:
        prompt, output = servegen_length_pmfs(directory)
        return cls(prompt, output)

    def sample(self, count: int, rng: np.random.Generator) -> LengthArrays:
        drawn = []
        for pmf in (self.prompt_pmf, self.output_pmf):
            values = np.fromiter(pmf.keys(), dtype=np.int64)
            weights = np.fromiter(pmf.values(), dtype=float)
            drawn.append(np.maximum(1, rng.choice(values, size=count, p=weights / weights.sum())))
        return drawn[0], drawn[1]


@dataclass(frozen=True, slots=True)
class TraceLengths:
    """(prompt, output) pairs of a trace's requests, drawn with replacement."""

    trace: Sequence[TraceRequest]

    def sample(self, count: int, rng: np.random.Generator) -> LengthArrays:
        if not self.trace:
            raise ValueError("cannot resample the lengths of an empty trace")
        picks = rng.integers(0, len(self.trace), size=count)
        prompt = np.array([self.trace[i].prompt_tokens for i in picks], dtype=np.int64)
        output = np.array([self.trace[i].output_tokens for i in picks], dtype=np.int64)
        return prompt, output


def poisson_workload(
    rate_per_s: float,
    lengths: LengthSource,
    count: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """Poisson arrivals at ``rate_per_s``: ``count`` requests, or all arriving within ``duration_s``."""
    return gamma_workload(rate_per_s, 1.0, lengths, count, duration_s, seed)


def gamma_workload(
    rate_per_s: float,
    shape: float,
    lengths: LengthSource,
    count: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """Gamma(shape) inter-arrival times with mean ``1/rate_per_s`` (shape < 1 is bursty); the first
    request arrives at 0."""
    if not rate_per_s > 0 or not shape > 0:
        raise ValueError(f"rate_per_s and shape must be positive, got {rate_per_s} and {shape}")
    rng = np.random.default_rng(seed)
    arrivals = _gamma_arrivals(rate_per_s, shape, count, duration_s, rng)
    prompt, output = lengths.sample(len(arrivals), rng)
    return [TraceRequest(float(t), int(p), int(o)) for t, p, o in zip(arrivals, prompt, output, strict=True)]


def servegen_workload(
    directory: Path,
    rate_per_s: float,
    count: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """Poisson arrivals at ``rate_per_s`` with the pooled ServeGen client length distributions."""
    return poisson_workload(rate_per_s, PmfLengths.from_servegen(directory), count, duration_s, seed)


def prompted_workload(
    rows: Sequence[TraceRequest],
    rate_per_s: float,
    count: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """Poisson arrivals at ``rate_per_s`` of ``rows`` drawn with replacement, prompt text and all."""
    if not rows:
        raise ValueError("cannot sample requests from an empty list")
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    rng = np.random.default_rng(seed)
    arrivals = _gamma_arrivals(rate_per_s, 1.0, count, duration_s, rng)
    picks = rng.integers(0, len(rows), size=len(arrivals))
    return [replace(rows[i], arrival_s=float(t)) for t, i in zip(arrivals, picks, strict=True)]


def _gamma_arrivals(
    rate_per_s: float, shape: float, count: int | None, duration_s: float | None, rng: np.random.Generator
) -> np.ndarray:
    if (count is None) == (duration_s is None):
        raise ValueError("give exactly one of count and duration_s")
    scale = 1.0 / (shape * rate_per_s)
    if count is not None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        gaps = rng.gamma(shape, scale, size=count - 1)
        return np.concatenate(([0.0], np.cumsum(gaps)))
    horizon = float(duration_s or 0.0)
    if not horizon > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    expected = rate_per_s * horizon
    gaps = rng.gamma(shape, scale, size=int(expected + 10 * np.sqrt(expected / shape) + 10))
    arrivals = np.concatenate(([0.0], np.cumsum(gaps)))
    return arrivals[arrivals < horizon]


def mean_rate_per_s(trace: Sequence[TraceRequest]) -> float:
    """Requests per second over the trace's arrival span (``(n - 1) / span``); 0 when undefined."""
    if len(trace) < 2:
        return 0.0
    span = trace[-1].arrival_s - trace[0].arrival_s
    return (len(trace) - 1) / span if span > 0 else 0.0


def retime(trace: Sequence[TraceRequest], rate_scale: float) -> list[TraceRequest]:
    """The trace with every arrival time divided by ``rate_scale`` (2.0 = twice the load)."""
    if not rate_scale > 0:
        raise ValueError(f"rate_scale must be positive, got {rate_scale}")
    return [replace(request, arrival_s=request.arrival_s / rate_scale) for request in trace]
