"""Filter ``model``: only replicas serving the requested model (a request naming no model takes any)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.columns import MODEL, Candidates, Mask, candidates_of, filled, loads_where
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class ModelFilter:
    name: ClassVar[str] = "model"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        return loads_where(candidates, self.keep(request, candidates_of(candidates), view))

    def keep(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Mask:
        code = candidates.fleet.models.find(request.model) if request.model else None
        if not request.model or (code is not None and code == candidates.model):
            return filled(len(candidates), True) > 0  # every candidate serves it
        if code is None:  # no replica has ever served it
            return filled(len(candidates), False) > 0
        serving: Mask = candidates.column(MODEL) == code
        return serving
