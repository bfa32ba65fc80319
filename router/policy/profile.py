"""A policy profile: filters in order, then weighted scorers, then a picker (DESIGN.md section 4.4).

``Profile.decide`` is on every request's path, so it works a column (one value per candidate) at a
time and builds the score records in bulk rather than looping over the candidates once per scorer;
the plugins do the thinking. Totals are the weighted sum of the clamped scores divided by the total
weight, so they stay in [0, 1] whatever the weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from protos.routing import RoutingRequest
from router.policy.plugin import Filter, Picker, RouteDecision, Scorer, candidate_scores
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(
                f"scorer {self.scorer.name!r}: weight must be finite and >= 0, got {self.weight}"
            )


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    _names: tuple[str, ...] = field(init=False, repr=False)
    _weights: tuple[float, ...] = field(init=False, repr=False)
    _total_weight: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a profile needs a name")
        names = tuple(s.scorer.name for s in self.scorers)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"profile {self.name!r}: scorer {duplicates[0]!r} appears more than once")
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "scorers", tuple(self.scorers))
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_weights", tuple(s.weight for s in self.scorers))
        object.__setattr__(self, "_total_weight", sum(s.weight for s in self.scorers))

    def decide(self, request: RoutingRequest, view: ClusterView, rng: random.Random) -> RouteDecision:
        """Choose a replica for ``request``; ``replica_id`` is None when no candidate survives."""
        candidates: Sequence[ReplicaLoad] = view.replicas
        removed: list[tuple[str, str]] = []
        if not candidates:
            return self._nothing(request, removed, "no replicas in the cluster view")
        for step in self.filters:
            kept = step.filter(request, candidates, view)
            if len(kept) < len(candidates):
                removed.extend(_dropped(candidates, kept, step.name))
            if not kept:
                return self._nothing(request, removed, f"no replica left after filter {step.name!r}")
            candidates = kept
        replica_ids = [r.replica_id for r in candidates]
        totals, parts = self._score(request, candidates, replica_ids, view)
        scores = candidate_scores(replica_ids, totals, parts)
        chosen = self.picker.pick(scores, rng)
        return RouteDecision(
            request.request_id,
            self.name,
            chosen,
            scores,
            tuple(removed),
            self._reason(chosen, replica_ids, totals, removed),
        )

    def _score(
        self,
        request: RoutingRequest,
        candidates: Sequence[ReplicaLoad],
        replica_ids: list[str],
        view: ClusterView,
    ) -> tuple[list[float], Iterable[tuple[tuple[str, float], ...]]]:
        """Each candidate's total and its (scorer name, clamped score) parts, in candidate order."""
        count = len(replica_ids)
        if not self.scorers:
            return [0.0] * count, repeat((), count)
        columns = [_column(s.scorer.score(request, candidates, view), replica_ids) for s in self.scorers]
        named = (zip(repeat(name), column) for name, column in zip(self._names, columns, strict=True))
        parts = zip(*named, strict=True)
        total_weight = self._total_weight
        if not total_weight:
            return [0.0] * count, parts
        if len(columns) == 1:
            return columns[0], parts
        # Summed scorer by scorer, in the profile's order, as a per-candidate loop would.
        weights = self._weights
        if len(columns) == 2:
            w0, w1 = weights
            return [(w0 * a + w1 * b) / total_weight for a, b in zip(*columns, strict=True)], parts
        if len(columns) == 3:
            w0, w1, w2 = weights
            totals = [(w0 * a + w1 * b + w2 * c) / total_weight for a, b, c in zip(*columns, strict=True)]
            return totals, parts
        weighted = [weights[0] * value for value in columns[0]]
        for weight, column in zip(weights[1:], columns[1:], strict=True):
            weighted = [w + weight * value for w, value in zip(weighted, column, strict=True)]
        return [w / total_weight for w in weighted], parts

    def _nothing(self, request: RoutingRequest, removed: list[tuple[str, str]], reason: str) -> RouteDecision:
        return RouteDecision(request.request_id, self.name, None, (), tuple(removed), reason)

    def _reason(
        self,
        chosen: str | None,
        replica_ids: list[str],
        totals: Sequence[float],
        removed: Sequence[tuple[str, str]],
    ) -> str:
        dropped = f"; {len(removed)} filtered out" if removed else ""
        if chosen is None:
            return f"{self.picker.name} chose none of {len(replica_ids)} candidates{dropped}"
        total = totals[replica_ids.index(chosen)] if chosen in replica_ids else 0.0
        return (
            f"{self.picker.name} chose {chosen} (score {total:.3f}) of {len(replica_ids)} candidates{dropped}"
        )


def _dropped(
    candidates: Sequence[ReplicaLoad], kept: Sequence[ReplicaLoad], filter_name: str
) -> list[tuple[str, str]]:
    """(replica id, filter name) of each candidate not in ``kept``, in order."""
    # Filters keep candidates in order, as the same objects: one walk finds the dropped ones.
    dropped = []
    remaining = iter(kept)
    next_kept = next(remaining, None)
    for replica in candidates:
        if replica is next_kept:
            next_kept = next(remaining, None)
        else:
            dropped.append((replica.replica_id, filter_name))
    if next_kept is None:
        return dropped
    kept_ids = {r.replica_id for r in kept}  # a filter that reorders or copies: match by id
    return [(r.replica_id, filter_name) for r in candidates if r.replica_id not in kept_ids]


def _clamped(value: float) -> float:
    if 0.0 <= value <= 1.0:
        return value
    return 1.0 if value > 1.0 else 0.0  # NaN lands here too, as 0


def _column(scores: Mapping[str, float], replica_ids: list[str]) -> list[float]:
    """The scores in candidate order, 0 for a missing id, clamped to [0, 1]."""
    if type(scores) is dict and len(scores) == len(replica_ids) and list(scores) == replica_ids:
        values = list(scores.values())  # the usual case: a dict built in candidate order
    else:
        values = list(map(scores.get, replica_ids, repeat(0.0)))
    return _clamped_all(values)


def _clamped_all(values: list[float]) -> list[float]:
    # min/max can step over a NaN; the sum cannot.
    if not values or (min(values) >= 0.0 and max(values) <= 1.0 and not math.isnan(sum(values))):
        return values
    return [value if 0.0 <= value <= 1.0 else _clamped(value) for value in values]
