"""Scorer ``least_request``: fewer requests in flight from the router scores higher, min-max
normalised across the candidates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.score_maps import lower_is_better
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class LeastRequestScorer:
    name: ClassVar[str] = "least_request"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        return lower_is_better({r.replica_id: r.inflight_requests for r in candidates})
