"""Filter ``kv_headroom``: only replicas whose projected free KV blocks hold the request.

A replica fits when its free blocks, less those the router has already promised to requests it
has not acknowledged, cover the prompt's uncached blocks plus the predicted output's (the p90 when
there is a prediction, else ``max_tokens``). When *no* replica fits, every candidate is kept: the
fleet is merely busy, the engines queue or preempt, and the scorers still rank them. A filter must
not turn load into a 503 by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.estimates import reserved_output_tokens
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class KvHeadroomFilter:
    name: ClassVar[str] = "kv_headroom"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        # kv_fits, inlined: this runs over every candidate on every request. The prefix index is
        # asked only when the request does not fit without its cached blocks.
        prompt, hashes = request.prompt_tokens, request.block_hashes
        footprint_tokens = prompt + reserved_output_tokens(request)
        match = view.prefix.match_blocks
        fitting = []
        block_size = needed = 0
        for replica in candidates:
            if replica.block_size != block_size:
                block_size = replica.block_size
                needed = -int(-footprint_tokens // block_size) if block_size > 0 else 0
            room = replica.free_blocks - replica.pending_blocks
            if room < 0:
                room = 0  # a request needing no new block still fits
            if needed <= room or (hashes and needed - match(replica.replica_id, hashes) <= room):
                fitting.append(replica)
        return fitting if fitting else candidates
