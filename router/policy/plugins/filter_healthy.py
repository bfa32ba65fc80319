"""Filter ``healthy``: only replicas that are healthy, not draining and whose circuit is closed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.columns import ROUTABLE, Candidates, Mask, candidates_of, loads_where
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class HealthyFilter:
    name: ClassVar[str] = "healthy"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        return loads_where(candidates, self.keep(request, candidates_of(candidates), view))

    def keep(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Mask:
        return candidates.column(ROUTABLE) > 0.0
