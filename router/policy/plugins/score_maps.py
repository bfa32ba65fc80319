"""Monotone maps from raw per-replica values to scores in [0, 1] (higher is better).

Every map gives tied values the same score and never divides by zero:

- :func:`ratio_scores` for non-negative costs (seconds, blocks, tokens): ``(min + offset) / (cost +
  offset)``. The best replica scores 1 and a replica twice as costly about 0.5, so weighted sums
  compare like with like. ``offset`` (in the cost's unit) is the difference that does not matter; it
  keeps zero costs finite and makes near-zero costs nearly tie. Infinite costs score 0.
- :func:`lower_is_better` and :func:`higher_is_better`: min-max normalisation, for counts whose
  scale means nothing on its own (queue lengths, in-flight requests). All equal: all score 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def ratio_scores(costs: Mapping[str, float], offset: float) -> dict[str, float]:
    inf = math.inf
    lowest = min(costs.values(), default=inf)
    if lowest == inf:
        return dict.fromkeys(costs, 0.0)
    best = (lowest if lowest > 0.0 else 0.0) + offset  # max(0.0, lowest)
    return {rid: (best / (c + offset) if c < inf else 0.0) if c > 0 else 1.0 for rid, c in costs.items()}


def ratio_scores_of(replica_ids: Sequence[str], costs: Sequence[float], offset: float) -> dict[str, float]:
    """``ratio_scores(dict(zip(replica_ids, costs)), offset)`` for distinct ids, without that dict."""
    inf = math.inf
    lowest = min(costs, default=inf)
    if lowest == inf:
        return dict.fromkeys(replica_ids, 0.0)
    best = (lowest if lowest > 0.0 else 0.0) + offset
    return {
        rid: (best / (c + offset) if c < inf else 0.0) if c > 0 else 1.0
        for rid, c in zip(replica_ids, costs, strict=True)
    }


def lower_is_better(values: Mapping[str, float]) -> dict[str, float]:
    if not values:
        return {}
    low, high = min(values.values()), max(values.values())
    if high <= low:
        return dict.fromkeys(values, 1.0)
    span = high - low
    return {rid: (high - v) / span for rid, v in values.items()}


def higher_is_better(values: Mapping[str, float]) -> dict[str, float]:
    """Min-max over the finite values; ``+inf`` (e.g. an idle replica's freeness) scores 1 and the
    finite values are then squeezed into [0, 0.5] so that they stay strictly below it."""
    inf = math.inf
    finite = [v for v in values.values() if v < inf]
    if not finite:
        return dict.fromkeys(values, 1.0)
    low, high = min(finite), max(finite)
    top = 1.0 if len(finite) == len(values) else 0.5
    span = high - low
    return {
        rid: 1.0 if v == inf else (top * (v - low) / span if span > 0 else top) for rid, v in values.items()
    }
