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
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protos.routing import RoutingRequest
from router.policy.columns import (
    BLOCK_SIZE,
    QUEUED_PREFILL,
    ROOM,
    Candidates,
    Floats,
    candidates_of,
    filled,
    lowest,
    scores_by_id,
)
from router.policy.plugins.estimates import (
    blocks_for_tokens,
    mean_running_context,
    reserved_output_tokens,
    uncached_prompt_tokens,
)
from router.policy.plugins.score_maps import ratio_column
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

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        everyone = candidates_of(candidates)
        return scores_by_id(everyone, self.score_columns(request, everyone, view))

    def score_columns(self, request: RoutingRequest, candidates: Candidates, view: ClusterView) -> Floats:
        # estimated_ttft_s and kv_fits, a column at a time.
        prompt = request.prompt_tokens
        block_sizes = candidates.column(BLOCK_SIZE)
        matched = candidates.matched_blocks(request, view)
        tokens = candidates.column(QUEUED_PREFILL) + np.maximum(prompt - matched * block_sizes, 0.0)
        rates = candidates.prefill_rates()
        if lowest(rates) > 0:
            times: Floats = tokens / rates
        else:
            times = filled(len(candidates), math.inf)
            np.divide(tokens, rates, out=times, where=rates > 0)
        scores = ratio_column(times, TIME_OFFSET_S)
        needed = blocks_for_tokens(prompt + reserved_output_tokens(request), candidates) - matched
        too_full = needed > candidates.column(ROOM)
        if 0 < np.count_nonzero(too_full) < len(too_full):
            scores[too_full] = 0.0
        return scores
