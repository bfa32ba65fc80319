"""Scorer ``llumnix``: Llumnix's dispatch rule, the freest replica wins.

    freeness_r = (free blocks_r - blocks needed by r's waiting requests) / (running_r + waiting_r)

with free blocks projected (less the router's unacknowledged promises), waiting including the
router's unacknowledged requests, and their blocks taken from the queued prefill tokens. An idle
replica is infinitely free, as in Llumnix. Scores are ``higher_is_better`` of the freeness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.score_maps import higher_is_better
from router.policy.view import ClusterView, ReplicaLoad


def llumnix_freeness(replica: ReplicaLoad) -> float:
    requests = replica.batch_size
    if requests <= 0:
        return math.inf
    waiting_blocks = -(-replica.queued_prefill_tokens // max(1, replica.block_size))
    return (replica.projected_free_blocks - waiting_blocks) / requests


@dataclass(frozen=True, slots=True)
class LlumnixScorer:
    name: ClassVar[str] = "llumnix"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        return higher_is_better({r.replica_id: llumnix_freeness(r) for r in candidates})
