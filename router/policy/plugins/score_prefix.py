"""Scorer ``prefix``: the fraction of the request's prompt blocks whose KV the replica already holds
(the longest leading run of matching block hashes). A request without block hashes scores 0
everywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad


def match_ratios(
    request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
) -> dict[str, float]:
    hashes = request.block_hashes
    if not hashes:
        return {r.replica_id: 0.0 for r in candidates}
    total = len(hashes)
    match = view.prefix.match_blocks
    return {r.replica_id: min(total, match(r.replica_id, hashes)) / total for r in candidates}


@dataclass(frozen=True, slots=True)
class PrefixScorer:
    name: ClassVar[str] = "prefix"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        return match_ratios(request, candidates, view)
