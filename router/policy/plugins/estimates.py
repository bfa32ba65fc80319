"""What one request would cost on one replica, in tokens and KV blocks: the shared arithmetic of the
token-aware filters and scorers."""

from __future__ import annotations

from collections.abc import Sequence

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad, match_counts


def matched_blocks(request: RoutingRequest, replica: ReplicaLoad, view: ClusterView) -> int:
    """Leading blocks of the request's prompt already in the replica's prefix cache."""
    if not request.block_hashes:
        return 0
    return view.prefix.match_blocks(replica.replica_id, request.block_hashes)


def replica_ids(candidates: Sequence[ReplicaLoad]) -> list[str]:
    return [r.replica_id for r in candidates]


def matched_blocks_all(
    request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView, ids: Sequence[str] = ()
) -> list[int]:
    """``matched_blocks`` of each candidate, in order (``ids``: their replica ids, when at hand)."""
    if not request.block_hashes:
        return [0] * len(candidates)
    return match_counts(view.prefix, ids or replica_ids(candidates), request.block_hashes)


def uncached_prompt_tokens(request: RoutingRequest, matched: int, block_size: int) -> int:
    """Prompt tokens the replica still has to prefill once ``matched`` cached blocks are reused."""
    return max(0, request.prompt_tokens - matched * block_size)


def reserved_output_tokens(request: RoutingRequest) -> float:
    """Output tokens to reserve KV for: the predicted 90th percentile (capped by ``max_tokens``) when
    there is a prediction, else the expected output (``max_tokens`` itself)."""
    if request.predicted is None:
        return request.expected_output_tokens
    return min(float(request.max_tokens), request.predicted.p90)


def blocks_needed(request: RoutingRequest, output_tokens: float, matched: int, block_size: int) -> int:
    """New KV blocks the request takes on a replica holding ``matched`` of its prefix blocks, once
    it has produced ``output_tokens``."""
    if block_size <= 0:
        return 0
    total_tokens = request.prompt_tokens + output_tokens
    return max(0, -int(-total_tokens // block_size) - matched)


def mean_running_context(replica: ReplicaLoad) -> float:
    """Mean context length of the replica's running sequences (0 when none run)."""
    if replica.num_running <= 0:
        return 0.0
    return replica.running_context_tokens / replica.num_running


def kv_fits(request: RoutingRequest, replica: ReplicaLoad, matched: int) -> bool:
    """Whether the replica's projected free blocks hold the prompt's uncached blocks plus the
    reserved output."""
    needed = blocks_needed(request, reserved_output_tokens(request), matched, replica.block_size)
    return needed <= replica.projected_free_blocks
