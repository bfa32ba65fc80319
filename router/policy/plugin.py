"""The policy plugin contracts (DESIGN.md section 4.4): filters, then weighted scorers, then a picker.

Scores are in [0, 1], higher is better. A whole algorithm that does not decompose (SGLang-style
cache-aware routing, a bandit) may be a single scorer with a max-score picker.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import NamedTuple, Protocol

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import Candidates, Floats, Mask
from router.policy.view import ClusterView, ReplicaLoad


class Filter(Protocol):
    @property
    def name(self) -> str: ...

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]: ...


class Scorer(Protocol):
    @property
    def name(self) -> str: ...

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        """A score in [0, 1] for each candidate's replica id (higher is better)."""
        ...


class CandidateScore(NamedTuple):
    """One candidate's score: immutable, and a named tuple so that a decision can build dozens of
    them at the cost of tuples."""

    replica_id: str
    total: float
    parts: tuple[tuple[str, float], ...]  # (scorer name, its score) before weighting


ScoreColumn = Sequence[float] | Floats  # one value per candidate

_NEW_SCORE = partial(tuple.__new__, CandidateScore)


def candidate_scores(
    replica_ids: Iterable[str], totals: Iterable[float], parts: Iterable[tuple[tuple[str, float], ...]]
) -> tuple[CandidateScore, ...]:
    """``CandidateScore(replica_ids[i], totals[i], parts[i])`` for every i, built in bulk."""
    scores: tuple[CandidateScore, ...] = tuple(map(_NEW_SCORE, zip(replica_ids, totals, parts, strict=True)))
    return scores


@dataclass(frozen=True, slots=True, eq=False)
class ScoreTable:
    """Every candidate's total and per-scorer scores as columns (candidate order); the per-candidate
    records are built when first asked for, since most decisions only need the choice."""

    replica_ids: Sequence[str]
    totals: ScoreColumn
    scorer_names: tuple[str, ...] = ()
    columns: tuple[ScoreColumn, ...] = ()

    def records(self) -> tuple[CandidateScore, ...]:
        ids, totals = list(self.replica_ids), _floats(self.totals)
        if not self.scorer_names:
            return candidate_scores(ids, totals, repeat((), len(ids)))
        named = (
            zip(repeat(name), _floats(column))
            for name, column in zip(self.scorer_names, self.columns, strict=True)
        )
        return candidate_scores(ids, totals, zip(*named, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScoreTable) and self.records() == other.records()

    def __hash__(self) -> int:
        return hash(self.records())


NO_SCORES = ScoreTable((), ())


def _floats(values: ScoreColumn) -> list[float]:
    as_list: list[float] = values.tolist() if isinstance(values, np.ndarray) else list(values)
    return as_list


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The choice and why: every candidate's score, what was filtered out, a short reason."""

    request_id: str
    policy: str
    replica_id: str | None
    table: ScoreTable
    filtered_out: tuple[tuple[str, str], ...]  # (replica id, filter name)
    reason: str
    _scores: tuple[CandidateScore, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def scores(self) -> tuple[CandidateScore, ...]:
        """Every candidate's score, in candidate order."""
        scores = self._scores
        if scores is None:
            scores = self.table.records()
            object.__setattr__(self, "_scores", scores)
        return scores

    @property
    def ranked(self) -> tuple[str, ...]:
        """Candidates best first: the dispatcher retries down this list before the first token."""
        ordered = sorted(self.scores, key=lambda s: -s.total)
        chosen = [self.replica_id] if self.replica_id is not None else []
        return tuple(chosen + [s.replica_id for s in ordered if s.replica_id != self.replica_id])


class Picker(Protocol):
    @property
    def name(self) -> str: ...

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None: ...


# The column forms of the plugins. A profile uses them when a plugin offers them (every plugin of the
# catalogue does), and the record forms above otherwise; both must give the same answers.


class ColumnFilter(Filter, Protocol):
    def keep(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Mask:
        """One flag per candidate: whether it stays."""
        ...


class ColumnScorer(Scorer, Protocol):
    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        """One score per candidate, in candidate order (clamped to [0, 1] by the profile)."""
        ...


class ColumnPicker(Picker, Protocol):
    def pick_index(self, totals: Floats, rng: random.Random) -> int | None:
        """The position of the chosen candidate in ``totals`` (candidate order), or None."""
        ...
