"""A policy profile: filters in order, then weighted scorers, then a picker (DESIGN.md section 4.4).

``Profile.decide`` is on every request's path, so it works on numpy columns (one value per
candidate, see :mod:`router.policy.columns`) kept up to date from view to view, and leaves the
per-candidate score records to be built when someone reads them. Plugins that offer only the record
forms of the contracts are run on the candidates' loads and their answers turned into columns.
Totals are the weighted sum of the clamped scores divided by the total weight, so they stay in
[0, 1] whatever the weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import Candidates, ColumnCache, Floats, Mask, highest, lowest
from router.policy.plugin import (
    NO_SCORES,
    Filter,
    Picker,
    RouteDecision,
    Scorer,
    ScoreTable,
)
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
    _columns: ColumnCache = field(default_factory=ColumnCache, init=False, repr=False, compare=False)

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
        if not view.replicas:
            return self._nothing(request, [], "no replicas in the cluster view")
        candidates = Candidates(self._columns.columns(view.replicas))
        removed: list[tuple[str, str]] = []
        for step in self.filters:
            mask = _kept(step, request, candidates, view)
            kept = int(np.count_nonzero(mask))
            if kept < len(mask):
                ids = candidates.ids
                removed.extend((ids[i], step.name) for i in np.flatnonzero(~mask).tolist())
                if not kept:
                    return self._nothing(request, removed, f"no replica left after filter {step.name!r}")
                candidates = candidates.kept(mask)
        columns = [_clamped(_scored(s.scorer, request, candidates, view)) for s in self.scorers]
        totals = self._totals(columns, len(candidates))
        ids = candidates.ids
        table = ScoreTable(ids, totals, self._names, tuple(columns))
        chosen = self._pick(table, rng)
        return RouteDecision(
            request.request_id,
            self.name,
            None if chosen is None else ids[chosen],
            table,
            tuple(removed),
            self._reason(ids, chosen, totals, removed),
        )

    def _totals(self, columns: list[Floats], count: int) -> Floats:
        total_weight = self._total_weight
        if not columns or not total_weight:
            return np.zeros(count)
        if len(columns) == 1:
            return columns[0]
        # Summed scorer by scorer, in the profile's order, as a per-candidate loop would.
        weights = self._weights
        if len(columns) == 2:
            w0, w1 = weights
            return (w0 * columns[0] + w1 * columns[1]) / total_weight
        if len(columns) == 3:
            w0, w1, w2 = weights
            return (w0 * columns[0] + w1 * columns[1] + w2 * columns[2]) / total_weight
        weighted = weights[0] * columns[0]
        for weight, column in zip(weights[1:], columns[1:], strict=True):
            weighted = weighted + weight * column
        result: Floats = weighted / total_weight
        return result

    def _pick(self, table: ScoreTable, rng: random.Random) -> int | None:
        """The chosen candidate's position."""
        pick_index = getattr(self.picker, "pick_index", None)
        if pick_index is not None:
            chosen: int | None = pick_index(table.totals, rng)
            return chosen
        replica_id = self.picker.pick(table.records(), rng)
        ids = list(table.replica_ids)
        return ids.index(replica_id) if replica_id in ids else None

    def _nothing(self, request: RoutingRequest, removed: list[tuple[str, str]], reason: str) -> RouteDecision:
        return RouteDecision(request.request_id, self.name, None, NO_SCORES, tuple(removed), reason)

    def _reason(
        self, ids: list[str], chosen: int | None, totals: Floats, removed: Sequence[tuple[str, str]]
    ) -> str:
        dropped = f"; {len(removed)} filtered out" if removed else ""
        if chosen is None:
            return f"{self.picker.name} chose none of {len(ids)} candidates{dropped}"
        return (
            f"{self.picker.name} chose {ids[chosen]} (score {float(totals[chosen]):.3f}) "
            f"of {len(ids)} candidates{dropped}"
        )


def _kept(step: Filter, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Mask:
    """One flag per candidate: whether ``step`` keeps it."""
    keep = getattr(step, "keep", None)
    if keep is not None:
        mask: Mask = keep(request, candidates, view)
        return mask
    loads = candidates.loads()
    return _kept_loads(loads, step.filter(request, loads, view))


def _kept_loads(candidates: Sequence[ReplicaLoad], kept: Sequence[ReplicaLoad]) -> Mask:
    # Filters keep candidates in order, as the same objects: one walk finds them.
    flags = []
    remaining = iter(kept)
    next_kept = next(remaining, None)
    for replica in candidates:
        if replica is next_kept:
            next_kept = next(remaining, None)
            flags.append(True)
        else:
            flags.append(False)
    if next_kept is not None:  # a filter that reorders or copies: match by id
        kept_ids = {r.replica_id for r in kept}
        flags = [r.replica_id in kept_ids for r in candidates]
    return np.array(flags, dtype=np.bool_)


def _scored(scorer: Scorer, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
    score_columns = getattr(scorer, "score_columns", None)
    if score_columns is not None:
        column: Floats = score_columns(request, candidates, view)
        return column
    scores = scorer.score(request, candidates.loads(), view)
    return np.array(_in_order(scores, candidates.ids), dtype=np.float64)


def _in_order(scores: Mapping[str, float], replica_ids: list[str]) -> list[float]:
    """The scores in candidate order, 0 for a missing id."""
    if type(scores) is dict and len(scores) == len(replica_ids) and list(scores) == replica_ids:
        return list(scores.values())  # the usual case: a dict built in candidate order
    return list(map(scores.get, replica_ids, repeat(0.0)))


def _clamped(values: Floats) -> Floats:
    """``values`` clamped to [0, 1], NaN as 0."""
    # min() and max() pass on a NaN, so in-range extremes mean nothing needs clamping.
    if not len(values) or (lowest(values) >= 0.0 and highest(values) <= 1.0):
        return values
    clamped: Floats = np.where(np.isnan(values), 0.0, np.clip(values, 0.0, 1.0))
    return clamped
