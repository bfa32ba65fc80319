"""Scorer ``dynamo_cost``: NVIDIA Dynamo's KV-router cost, lowest wins.

    cost_r = prefill_weight · prefill blocks_r + active blocks_r

prefill blocks are r's queued prefill tokens plus this request's uncached prompt tokens, in blocks
(as Dynamo counts a worker's pending prefill); active blocks are the KV blocks r holds or the
router has promised it (``total - projected free``). Scores are ``ratio_scores`` (1-block offset).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import (
    BLOCK_SIZE,
    QUEUED_PREFILL,
    ROOM,
    TOTAL,
    Candidates,
    Floats,
    candidates_of,
    scores_by_id,
)
from router.policy.plugins.estimates import uncached_prompt_tokens
from router.policy.plugins.score_maps import ratio_column
from router.policy.view import ClusterView, ReplicaLoad


def dynamo_cost(request: RoutingRequest, replica: ReplicaLoad, matched: int, prefill_weight: float) -> float:
    block_size = max(1, replica.block_size)
    uncached = uncached_prompt_tokens(request, matched, replica.block_size)
    prefill_blocks = (replica.queued_prefill_tokens + uncached) / block_size
    active_blocks = max(0, replica.total_blocks - replica.projected_free_blocks)
    return prefill_weight * prefill_blocks + active_blocks


@dataclass(frozen=True, slots=True)
class DynamoCostScorer:
    """``prefill_weight`` (default 1.0): Dynamo's ``overlap_score_weight``."""

    name: ClassVar[str] = "dynamo_cost"
    prefill_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.prefill_weight < 0:
            raise ValueError(f"dynamo_cost: prefill_weight must be >= 0, got {self.prefill_weight}")

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        everyone = candidates_of(candidates)
        return scores_by_id(everyone, self.score_columns(request, everyone, view))

    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        # dynamo_cost, a column at a time.
        block_sizes = candidates.column(BLOCK_SIZE)
        matched = candidates.matched_blocks(request, view)
        uncached = np.maximum(request.prompt_tokens - matched * block_sizes, 0.0)
        queued = candidates.column(QUEUED_PREFILL) + uncached
        active = np.maximum(candidates.column(TOTAL) - candidates.column(ROOM), 0.0)
        return ratio_column(self.prefill_weight * (queued / np.maximum(block_sizes, 1.0)) + active, 1.0)
