"""Scorer ``prefix``: the fraction of the request's prompt blocks whose KV the replica already holds
(the longest leading run of matching block hashes). A request without block hashes scores 0
everywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.estimates import replica_ids
from router.policy.view import ClusterView, ReplicaLoad, match_counts


def match_ratios(
    request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
) -> dict[str, float]:
    hashes = request.block_hashes
    ids = replica_ids(candidates)
    if not hashes:
        return dict.fromkeys(ids, 0.0)
    total = len(hashes)
    matches = match_counts(view.prefix, ids, hashes)
    return {replica_id: min(total, matched) / total for replica_id, matched in zip(ids, matches, strict=True)}


@dataclass(frozen=True, slots=True)
class PrefixScorer:
    name: ClassVar[str] = "prefix"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        return match_ratios(request, candidates, view)
