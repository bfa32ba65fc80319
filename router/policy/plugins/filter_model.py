"""Filter ``model``: only replicas serving the requested model (a request naming no model takes any)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class ModelFilter:
    name: ClassVar[str] = "model"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        model = request.model
        if not model:
            return candidates
        return [r for r in candidates if r.model == model]
