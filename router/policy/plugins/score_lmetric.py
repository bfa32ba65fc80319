"""Scorer ``lmetric``: LMetric's product rule, lowest wins.

    cost_r = new prefill tokens_r × batch size_r

new prefill tokens are r's queued prefill tokens plus this request's uncached prompt tokens; the
batch size counts running, waiting and unacknowledged requests. The product cancels the weights a
linear mix of a cache term and a load term would need. It is 0 on every idle replica, so among
equal products fewer new prefill tokens wins (a tie-break worth 1/1000 of a batch slot). Scores are
``ratio_scores`` (1-token offset).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.estimates import matched_blocks_all, replica_ids, uncached_prompt_tokens
from router.policy.plugins.score_maps import ratio_scores_of
from router.policy.view import ClusterView, ReplicaLoad

TIE_BREAK_BATCH = 1e-3


def new_prefill_tokens(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> int:
    return replica.queued_prefill_tokens + uncached_prompt_tokens(request, matched, replica.block_size)


def lmetric_cost(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> float:
    return float(new_prefill_tokens(request, replica, matched) * replica.batch_size)


@dataclass(frozen=True, slots=True)
class LmetricScorer:
    name: ClassVar[str] = "lmetric"

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        # new_prefill_tokens and batch_size, inlined.
        prompt = request.prompt_tokens
        ids = replica_ids(candidates)
        costs: list[float] = []
        matches = matched_blocks_all(request, candidates, view, ids)
        for r, matched in zip(candidates, matches, strict=True):
            uncached = prompt - matched * r.block_size
            queued = r.waiting_prefill_tokens + r.pending_prefill_tokens
            new_tokens = queued + (uncached if uncached > 0 else 0)
            batch = r.num_running + r.num_waiting + r.pending_requests
            costs.append(new_tokens * (batch + TIE_BREAK_BATCH))
        return ratio_scores_of(ids, costs, 1.0)
