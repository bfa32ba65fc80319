"""A policy profile: filters in order, then weighted scorers, then a picker (DESIGN.md section 4.4).

``Profile.decide`` is on every request's path, so it is plain loops over the candidates; the
plugins do the thinking. Totals are the weighted sum of the clamped scores divided by the total
weight, so they stay in [0, 1] whatever the weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from protos.routing import RoutingRequest
from router.policy.plugin import CandidateScore, Filter, Picker, RouteDecision, Scorer
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
                kept_ids = {r.replica_id for r in kept}
                removed.extend((r.replica_id, step.name) for r in candidates if r.replica_id not in kept_ids)
            if not kept:
                return self._nothing(request, removed, f"no replica left after filter {step.name!r}")
            candidates = kept
        scores = self._score(request, candidates, view)
        chosen = self.picker.pick(scores, rng)
        return RouteDecision(
            request.request_id,
            self.name,
            chosen,
            scores,
            tuple(removed),
            self._reason(chosen, scores, removed),
        )

    def _score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> tuple[CandidateScore, ...]:
        if not self.scorers:
            return tuple([CandidateScore(r.replica_id, 0.0, ()) for r in candidates])
        maps = [s.scorer.score(request, candidates, view) for s in self.scorers]
        if len(maps) == 1:
            return _single_scorer(candidates, self._names[0], maps[0], self._total_weight > 0)
        weighted_maps = list(zip(self._names, self._weights, maps, strict=True))
        total_weight = self._total_weight
        scores = []
        for replica in candidates:
            replica_id = replica.replica_id
            parts = []
            weighted = 0.0
            for name, weight, scores_by_id in weighted_maps:
                value = scores_by_id.get(replica_id, 0.0)
                if not 0.0 <= value <= 1.0:
                    value = _clamped(value)
                parts.append((name, value))
                weighted += weight * value
            total = weighted / total_weight if total_weight else 0.0
            scores.append(CandidateScore(replica_id, total, tuple(parts)))
        return tuple(scores)

    def _nothing(self, request: RoutingRequest, removed: list[tuple[str, str]], reason: str) -> RouteDecision:
        return RouteDecision(request.request_id, self.name, None, (), tuple(removed), reason)

    def _reason(
        self, chosen: str | None, scores: Sequence[CandidateScore], removed: Sequence[tuple[str, str]]
    ) -> str:
        dropped = f"; {len(removed)} filtered out" if removed else ""
        if chosen is None:
            return f"{self.picker.name} chose none of {len(scores)} candidates{dropped}"
        total = next((s.total for s in scores if s.replica_id == chosen), 0.0)
        return f"{self.picker.name} chose {chosen} (score {total:.3f}) of {len(scores)} candidates{dropped}"


def _clamped(value: float) -> float:
    if 0.0 <= value <= 1.0:
        return value
    return 1.0 if value > 1.0 else 0.0  # NaN lands here too, as 0


def _single_scorer(
    candidates: Sequence[ReplicaLoad], name: str, scores: Mapping[str, float], weighted: bool
) -> tuple[CandidateScore, ...]:
    result = []
    for replica in candidates:
        replica_id = replica.replica_id
        value = scores.get(replica_id, 0.0)
        if not 0.0 <= value <= 1.0:
            value = _clamped(value)
        result.append(CandidateScore(replica_id, value if weighted else 0.0, ((name, value),)))
    return tuple(result)
