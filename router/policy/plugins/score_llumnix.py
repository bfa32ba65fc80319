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
        freeness: dict[str, float] = {}
        inf = math.inf
        for r in candidates:  # llumnix_freeness, inlined
            requests = r.num_running + r.num_waiting + r.pending_requests
            if requests <= 0:
                freeness[r.replica_id] = inf
                continue
            block_size = r.block_size
            waiting_blocks = -(
                -(r.waiting_prefill_tokens + r.pending_prefill_tokens)
                // (block_size if block_size > 1 else 1)
            )
            free = r.free_blocks - r.pending_blocks
            freeness[r.replica_id] = ((free if free > 0 else 0) - waiting_blocks) / requests
        return higher_is_better(freeness)
