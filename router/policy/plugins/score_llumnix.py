"""Scorer ``llumnix``: Llumnix's dispatch rule, the freest replica wins.

    freeness_r = (free blocks_r - blocks needed by r's waiting requests) / (running_r + waiting_r)

with free blocks projected (less the router's unacknowledged promises), waiting including the
router's unacknowledged requests, and their blocks taken from the queued prefill tokens. An idle
replica is infinitely free, as in Llumnix. Scores are ``higher_is_better`` of the freeness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import (
    BATCH,
    BLOCK_SIZE,
    QUEUED_PREFILL,
    ROOM,
    Candidates,
    Floats,
    candidates_of,
    filled,
    scores_by_id,
)
from router.policy.plugins.score_maps import higher_is_better_column
from router.policy.view import ClusterView, ReplicaLoad


def llumnix_freeness(replica: ReplicaLoad) -> float:
    requests = replica.batch_size
    if requests <= 0:
        return math.inf
    waiting_blocks = -(-replica.queued_prefill_tokens // max(1, replica.block_size))
    return (replica.projected_free_blocks - waiting_blocks) / requests


@dataclass(frozen=True, slots=True)
class LlumnixScorer:
    name: ClassVar[str] = "llumnix"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        everyone = candidates_of(candidates)
        return scores_by_id(everyone, self.score_columns(request, everyone, view))

    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        # llumnix_freeness, a column at a time.
        requests = candidates.column(BATCH)
        busy = requests > 0
        block_sizes = np.maximum(candidates.column(BLOCK_SIZE), 1.0)
        waiting_blocks = -np.floor_divide(-candidates.column(QUEUED_PREFILL), block_sizes)
        freeness = filled(len(candidates), math.inf)
        np.divide(candidates.column(ROOM) - waiting_blocks, requests, out=freeness, where=busy)
        return higher_is_better_column(freeness)
