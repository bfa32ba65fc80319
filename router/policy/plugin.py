"""The policy plugin contracts (DESIGN.md section 4.4): filters, then weighted scorers, then a picker.

Scores are in [0, 1], higher is better. A whole algorithm that does not decompose (SGLang-style
cache-aware routing, a bandit) may be a single scorer with a max-score picker.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Protocol

from protos.routing import RoutingRequest
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


_NEW_SCORE = partial(tuple.__new__, CandidateScore)


def candidate_scores(
    replica_ids: Iterable[str], totals: Iterable[float], parts: Iterable[tuple[tuple[str, float], ...]]
) -> tuple[CandidateScore, ...]:
    """``CandidateScore(replica_ids[i], totals[i], parts[i])`` for every i, built in bulk."""
    scores: tuple[CandidateScore, ...] = tuple(map(_NEW_SCORE, zip(replica_ids, totals, parts, strict=True)))
    return scores


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The choice and why: every candidate's score, what was filtered out, a short reason."""

    request_id: str
    policy: str
    replica_id: str | None
    scores: tuple[CandidateScore, ...]
    filtered_out: tuple[tuple[str, str], ...]  # (replica id, filter name)
    reason: str

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
