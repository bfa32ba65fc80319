"""Filter ``healthy``: only replicas that are healthy, not draining and whose circuit is closed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class HealthyFilter:
    name: ClassVar[str] = "healthy"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        return [r for r in candidates if r.healthy and not r.draining and not r.circuit_open]
