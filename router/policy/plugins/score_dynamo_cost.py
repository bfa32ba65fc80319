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

from protos.routing import RoutingRequest
from router.policy.plugins.estimates import matched_blocks_all, replica_ids, uncached_prompt_tokens
from router.policy.plugins.score_maps import ratio_scores_of
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
        # dynamo_cost, inlined.
        weight, prompt = self.prefill_weight, request.prompt_tokens
        ids = replica_ids(candidates)
        costs: list[float] = []
        matches = matched_blocks_all(request, candidates, view, ids)
        for r, matched in zip(candidates, matches, strict=True):
            block_size = r.block_size
            uncached = prompt - matched * block_size
            queued = r.waiting_prefill_tokens + r.pending_prefill_tokens + (uncached if uncached > 0 else 0)
            free = r.free_blocks - r.pending_blocks
            active = r.total_blocks - (free if free > 0 else 0)
            costs.append(
                weight * (queued / (block_size if block_size > 1 else 1)) + (active if active > 0 else 0)
            )
        return ratio_scores_of(ids, costs, 1.0)
