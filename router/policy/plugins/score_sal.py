"""Scorer ``sal``: speed-aware, token-aware, memory-aware.

The estimated time until this request's first token on replica r is

    (queued prefill tokens_r + this request's uncached prompt tokens) / prefill rate_r

where the queued tokens include those the router has sent but r has not acknowledged, the uncached
tokens are the prompt less the blocks r already holds (prefix match × block size), and the rate is
r's own GPU cost model given its running decodes and their mean context (times the router's learned
correction). Dividing by the replica's own rate is what balances a mixed H100/A100/V100 fleet by
time rather than by request count.

Scores are ``ratio_scores`` of that time (1 ms offset). A replica whose projected free blocks cannot
hold the prompt plus the predicted output (p90, else ``max_tokens``) scores 0, unless no replica can,
in which case the times alone rank them (the engines will queue; the fastest queue still wins).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.estimates import (
    matched_blocks_all,
    mean_running_context,
    replica_ids,
    reserved_output_tokens,
    uncached_prompt_tokens,
)
from router.policy.plugins.score_maps import ratio_scores_of
from router.policy.plugins.speed_cache import SpeedCache
from router.policy.view import ClusterView, ReplicaLoad

TIME_OFFSET_S = 1e-3


def estimated_ttft_s(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> float:
    """Seconds until the request's first token on ``replica`` (``inf`` for a replica that cannot
    prefill at all)."""
    uncached = uncached_prompt_tokens(request, matched, replica.block_size)
    rate = replica.speed.prefill_tokens_per_s(replica.num_running, mean_running_context(replica))
    if rate <= 0:
        return math.inf
    return (replica.queued_prefill_tokens + uncached) / rate


@dataclass(frozen=True, slots=True)
class SalScorer:
    name: ClassVar[str] = "sal"
    _speeds: SpeedCache = field(default_factory=SpeedCache, init=False, repr=False, compare=False)

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        # The arithmetic of estimated_ttft_s and kv_fits, inlined: this loop is the policy's hot path.
        prompt = request.prompt_tokens
        footprint_tokens = prompt + reserved_output_tokens(request)
        whole_prompt = prompt if prompt > 0 else 0
        ids = replica_ids(candidates)
        matches = matched_blocks_all(request, candidates, view, ids)
        rates = self._speeds.prefill_rates(candidates)
        times: list[float] = []
        too_full: list[str] = []
        block_size = footprint_blocks = 0
        inf = math.inf
        for replica, replica_id, matched, rate in zip(candidates, ids, matches, rates, strict=True):
            if replica.block_size != block_size:
                block_size = replica.block_size
                footprint_blocks = -int(-footprint_tokens // block_size) if block_size > 0 else 0
            if matched:
                uncached = prompt - matched * block_size
                tokens = (
                    replica.waiting_prefill_tokens
                    + replica.pending_prefill_tokens
                    + (uncached if uncached > 0 else 0)
                )
                needed = footprint_blocks - matched
            else:  # most replicas: nothing cached
                tokens = replica.waiting_prefill_tokens + replica.pending_prefill_tokens + whole_prompt
                needed = footprint_blocks
            times.append(tokens / rate if rate > 0 else inf)
            if needed > 0 and needed > replica.free_blocks - replica.pending_blocks:
                too_full.append(replica_id)
        scores = ratio_scores_of(ids, times, TIME_OFFSET_S)
        if len(too_full) < len(candidates):
            for replica_id in too_full:
                scores[replica_id] = 0.0
        return scores
