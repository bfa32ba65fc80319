"""Hand-built cluster views for policy tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protos.routing import LengthEstimate, RoutingRequest
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import get_gpu_profile, get_model_profile
from router.policy.view import ClusterView, NoPrefixIndex, PrefixLookup, ReplicaLoad, ReplicaSpeed

MODEL = "llama-3.1-8b"


def speed(gpu: str | None) -> ReplicaSpeed:
    """The calibrated cost model of ``gpu`` serving MODEL; None for the defaults of unknown hardware."""
    if gpu is None:
        return ReplicaSpeed(None)
    return ReplicaSpeed(StepCostModel(get_gpu_profile(gpu), get_model_profile(MODEL)))


def replica(replica_id: str, gpu: str | None = "a100-80gb", **fields: Any) -> ReplicaLoad:
    """An idle, healthy replica with 1000 free 16-token blocks, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "model": MODEL,
        "tier": "cloud",
        "total_blocks": 1000,
        "free_blocks": 1000,
        "block_size": 16,
        "num_running": 0,
        "num_waiting": 0,
        "waiting_prefill_tokens": 0,
        "running_context_tokens": 0,
    }
    values["speed"] = speed(gpu)
    values.update(fields)
    return ReplicaLoad(replica_id=replica_id, gpu=gpu or "unknown", **values)


def request(
    prompt_tokens: int = 1000,
    *,
    blocks: int | None = None,
    max_tokens: int = 512,
    predicted: LengthEstimate | None = None,
    model: str = MODEL,
    extra: tuple[tuple[str, str], ...] = (),
    request_id: str = "req-1",
) -> RoutingRequest:
    """A request whose block hashes are 1, 2, ... (one per full 16-token block unless ``blocks``)."""
    count = prompt_tokens // 16 if blocks is None else blocks
    return RoutingRequest(
        request_id, model, prompt_tokens, tuple(range(1, count + 1)), max_tokens, predicted, extra=extra
    )


@dataclass
class DictPrefix:
    """A prefix index from a mapping of replica id to the block hashes it holds."""

    cached: Mapping[str, Sequence[int]] = field(default_factory=dict)

    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        held = set(self.cached.get(replica_id, ()))
        matched = 0
        for block_hash in block_hashes:
            if block_hash not in held:
                break
            matched += 1
        return matched


def view(*replicas: ReplicaLoad, prefix: PrefixLookup | None = None) -> ClusterView:
    return ClusterView(tuple(replicas), 0.0, prefix if prefix is not None else NoPrefixIndex())


def best(scores: Mapping[str, float]) -> str:
    """The replica with the highest score (the tests make it unique)."""
    top = max(scores.values())
    winners = [rid for rid, value in scores.items() if value == top]
    assert len(winners) == 1, f"tie between {winners}"
    return winners[0]
