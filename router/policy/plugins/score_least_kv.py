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
        return {r.replica_id: 1.0 - r.projected_kv_usage for r in candidates}
