"""Scorer ``predicted_cost``: uncertainty-aware expected cost, SageSched-style.

For an output of L tokens (capped by ``max_tokens``), adding the request to replica r costs the
fleet, in request-seconds:

- its own latency: its time to first token (as ``sal``) plus L decode steps at r's step time with
  one more sequence in the batch;
- the slowdown of the others: each of r's running sequences waits out this request's prefill, and
  every request in r's batch takes L steps that are slower by the marginal step time (the others are
  assumed to outlive it, an upper bound);
- a preemption: when the prompt plus L tokens outgrow r's projected free blocks, the prompt plus
  the output so far is computed again.

The cost is averaged over ``request.predicted.bins`` (each bin at its midpoint) when present, else
over a three-point stand-in (p50 with probability 0.5, the mean 0.3, p90 0.2), else over
``max_tokens``. The preemption term makes that average differ from the cost of the mean. A replica
whose KV usage would pass ``kv_threshold`` once the request's p90 footprint is added scores 0 (unless
none stays under it). Scores are ``ratio_scores`` of the expected cost (1 ms offset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.estimates import (
    blocks_needed,
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
THREE_POINT_WEIGHTS = (0.5, 0.3, 0.2)  # p50, mean, p90

Outcomes = tuple[tuple[float, float], ...]  # (output tokens, probability)


def output_outcomes(request: RoutingRequest) -> Outcomes:
    """The output-length distribution to integrate over, capped by ``max_tokens``."""
    cap = float(request.max_tokens)
    predicted = request.predicted
    if predicted is None:
        return ((cap, 1.0),)
    mass = sum(p for _, p in predicted.bins if p > 0)
    if mass > 0:
        points: list[tuple[float, float]] = []
        lower = 0.0
        for upper, probability in predicted.bins:
            if probability > 0:
                points.append((min(cap, (lower + upper) / 2), probability / mass))
            lower = float(upper)
        return tuple(points)
    values = (predicted.p50, predicted.mean, predicted.p90)
    return tuple((min(cap, v), w) for v, w in zip(values, THREE_POINT_WEIGHTS, strict=True))


def expected_cost_s(request: RoutingRequest, replica: ReplicaLoad, matched: int, outcomes: Outcomes) -> float:
    """Expected increase of total completion time (request-seconds) from placing the request on r."""
    speed, context, batch = replica.speed, mean_running_context(replica), replica.batch_size
    rate = speed.prefill_tokens_per_s(replica.num_running, context)
    step_with_s = speed.decode_step_s(batch + 1, context)
    return _expected_cost_s(
        request,
        replica,
        matched,
        outcomes,
        rate,
        step_with_s,
        step_with_s - speed.decode_step_s(batch, context),
    )


def _expected_cost_s(
    request: RoutingRequest,
    replica: ReplicaLoad,
    matched: int,
    outcomes: Outcomes,
    rate: float,
    step_with_s: float,
    marginal_step_s: float,
) -> float:
    if rate <= 0:
        return math.inf
    own_prefill_s = uncached_prompt_tokens(request, matched, replica.block_size) / rate
    fixed_s = replica.queued_prefill_tokens / rate + own_prefill_s + replica.num_running * own_prefill_s
    per_token_s = step_with_s + replica.batch_size * marginal_step_s
    block_size = replica.block_size
    # An output of more than this many tokens outgrows the projected free blocks (plus the cached ones).
    room_tokens = (replica.projected_free_blocks + matched) * block_size - request.prompt_tokens
    expected = 0.0
    for tokens, probability in outcomes:
        cost = fixed_s + tokens * per_token_s
        if block_size > 0 and tokens > room_tokens:
            cost += (request.prompt_tokens + tokens) / rate
        expected += probability * cost
    return expected


def kv_usage_after(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> float:
    """Projected KV usage once the request's p90 footprint (prompt + reserved output) is added."""
    if replica.total_blocks <= 0:
        return 1.0
    needed = blocks_needed(request, reserved_output_tokens(request), matched, replica.block_size)
    return 1.0 - (replica.projected_free_blocks - needed) / replica.total_blocks


@dataclass(frozen=True, slots=True)
class PredictedCostScorer:
    """``kv_threshold`` (default 0.9): the KV usage a placement must stay under."""

    name: ClassVar[str] = "predicted_cost"
    kv_threshold: float = 0.9
    _speeds: SpeedCache = field(default_factory=SpeedCache, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.kv_threshold <= 1.0:
            raise ValueError(f"predicted_cost: kv_threshold must be in (0, 1], got {self.kv_threshold}")

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        # _expected_cost_s and kv_usage_after, inlined: this loop is the policy's hot path.
        outcomes = output_outcomes(request)
        prompt, threshold = request.prompt_tokens, self.kv_threshold
        footprint_tokens = prompt + reserved_output_tokens(request)
        ids = replica_ids(candidates)
        matches = matched_blocks_all(request, candidates, view, ids)
        speeds = self._speeds.replica_speeds(candidates)
        costs: list[float] = []
        unsafe: list[str] = []
        block_size = footprint_blocks = 0
        for replica, replica_id, matched, (rate, step_with_s, marginal_step_s) in zip(
            candidates, ids, matches, speeds, strict=True
        ):
            if replica.block_size != block_size:
                block_size = replica.block_size
                footprint_blocks = -int(-footprint_tokens // block_size) if block_size > 0 else 0
            free = replica.free_blocks - replica.pending_blocks
            if free < 0:
                free = 0
            running = replica.num_running
            if rate <= 0:
                costs.append(math.inf)
            else:
                uncached = prompt - matched * block_size
                own_prefill_s = (uncached if uncached > 0 else 0) / rate
                fixed_s = (
                    (replica.waiting_prefill_tokens + replica.pending_prefill_tokens) / rate
                    + own_prefill_s
                    + running * own_prefill_s
                )
                batch = running + replica.num_waiting + replica.pending_requests
                per_token_s = step_with_s + batch * marginal_step_s
                room_tokens = (free + matched) * block_size - prompt
                expected = 0.0
                for tokens, probability in outcomes:
                    cost = fixed_s + tokens * per_token_s
                    if block_size > 0 and tokens > room_tokens:
                        cost += (prompt + tokens) / rate
                    expected += probability * cost
                costs.append(expected)
            total = replica.total_blocks
            if total <= 0:
                usage_after = 1.0
            else:
                needed = footprint_blocks - matched if block_size > 0 else 0
                usage_after = 1.0 - (free - (needed if needed > 0 else 0)) / total
            if usage_after > threshold:
                unsafe.append(replica_id)
        scores = ratio_scores_of(ids, costs, TIME_OFFSET_S)
        if len(unsafe) < len(candidates):
            for replica_id in unsafe:
                scores[replica_id] = 0.0
        return scores
