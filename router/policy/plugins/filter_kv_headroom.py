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
from router.policy.columns import ROOM, Candidates, Mask, candidates_of, every, loads_where, some
from router.policy.plugins.estimates import blocks_for_tokens, reserved_output_tokens
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class KvHeadroomFilter:
    name: ClassVar[str] = "kv_headroom"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        return loads_where(candidates, self.keep(request, candidates_of(candidates), view))

    def keep(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Mask:
        # kv_fits, a column at a time. The prefix index is asked only when some candidate does not
        # fit without its cached blocks.
        needed = blocks_for_tokens(request.prompt_tokens + reserved_output_tokens(request), candidates)
        room = candidates.column(ROOM)  # a request needing no new block still fits
        fits = room >= needed
        if request.block_hashes and not every(fits):
            fits = room >= needed - candidates.matched_blocks(request, view)
        return fits if some(fits) else fits | True
