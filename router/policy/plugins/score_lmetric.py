"""Scorer ``lmetric``: LMetric's product rule, lowest wins.

    cost_r = new prefill tokens_r × batch size_r

new prefill tokens are r's queued prefill tokens plus this request's uncached prompt tokens; the
batch size counts running, waiting and unacknowledged requests. The product cancels the weights a
linear mix of a cache term and a load term would need. It is 0 on every idle replica, so among
equal products fewer new prefill tokens wins (a tie-break worth 1/1000 of a batch slot). Scores are
``ratio_scores`` (1-token offset).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import (
    BATCH,
    BLOCK_SIZE,
    QUEUED_PREFILL,
    Candidates,
    Floats,
    candidates_of,
    scores_by_id,
)
from router.policy.plugins.estimates import uncached_prompt_tokens
from router.policy.plugins.score_maps import ratio_column
from router.policy.view import ClusterView, ReplicaLoad

TIE_BREAK_BATCH = 1e-3


def new_prefill_tokens(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> int:
    return replica.queued_prefill_tokens + uncached_prompt_tokens(request, matched, replica.block_size)


def lmetric_cost(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> float:
    return float(new_prefill_tokens(request, replica, matched) * replica.batch_size)


@dataclass(frozen=True, slots=True)
class LmetricScorer:
    name: ClassVar[str] = "lmetric"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        everyone = candidates_of(candidates)
        return scores_by_id(everyone, self.score_columns(request, everyone, view))

    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        # new_prefill_tokens × (batch_size + the tie-break), a column at a time.
        matched = candidates.matched_blocks(request, view)
        uncached = np.maximum(request.prompt_tokens - matched * candidates.column(BLOCK_SIZE), 0.0)
        new_tokens = candidates.column(QUEUED_PREFILL) + uncached
        return ratio_column(new_tokens * (candidates.column(BATCH) + TIE_BREAK_BATCH), 1.0)
