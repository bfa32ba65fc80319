"""Scorer ``queue_depth``: shorter queues score higher (waiting requests plus those the router has
sent but the replica has not acknowledged), min-max normalised across the candidates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.columns import QUEUE_DEPTH, Candidates, Floats, candidates_of, scores_by_id
from router.policy.plugins.score_maps import lower_is_better_column
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class QueueDepthScorer:
    name: ClassVar[str] = "queue_depth"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        everyone = candidates_of(candidates)
        return scores_by_id(everyone, self.score_columns(request, everyone, view))

    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        return lower_is_better_column(candidates.column(QUEUE_DEPTH))
