"""Scorer ``least_kv``: ``1 - projected KV usage`` (free blocks less those promised to requests the
replica has not acknowledged yet, over all blocks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import ROOM, TOTAL, Candidates, Floats, candidates_of, scores_by_id
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class LeastKvScorer:
    name: ClassVar[str] = "least_kv"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        everyone = candidates_of(candidates)
        return scores_by_id(everyone, self.score_columns(request, everyone, view))

    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        total = candidates.column(TOTAL)
        known = total > 0
        usage = np.where(known, 1.0 - candidates.column(ROOM) / np.where(known, total, 1.0), 1.0)
        scores: Floats = 1.0 - usage
        return scores
