"""Scorer ``least_kv``: ``1 - projected KV usage`` (free blocks less those promised to requests the
replica has not acknowledged yet, over all blocks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class LeastKvScorer:
    name: ClassVar[str] = "least_kv"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        scores: dict[str, float] = {}
        for r in candidates:  # 1 - projected_kv_usage, inlined
            total, free = r.total_blocks, r.free_blocks - r.pending_blocks
            scores[r.replica_id] = 1.0 - (1.0 - (free if free > 0 else 0) / total if total > 0 else 1.0)
        return scores
