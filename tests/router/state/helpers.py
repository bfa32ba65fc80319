"""Snapshots and descriptors for router-state tests."""

from __future__ import annotations

from typing import Any

from protos.snapshot import ReplicaSnapshot, Tier
from router.state.replica import ReplicaDescriptor

MODEL = "llama-3.1-8b"


def descriptor(replica_id: str = "r1", **fields: Any) -> ReplicaDescriptor:
    values: dict[str, Any] = {
        "model": MODEL,
        "gpu": "a100-80gb",
        "tier": "cloud",
        "address": f"{replica_id}:50051",
        "max_model_len": 8192,
    }
    values.update(fields)
    return ReplicaDescriptor(replica_id=replica_id, **values)


def snapshot(replica_id: str = "r1", seq: int = 1, **fields: Any) -> ReplicaSnapshot:
    values: dict[str, Any] = {
        "model": MODEL,
        "gpu": "a100-80gb",
        "tier": Tier.CLOUD,
        "time": 0.0,
        "total_blocks": 1000,
        "free_blocks": 800,
        "cached_blocks": 50,
        "block_size": 16,
        "num_running": 3,
        "num_waiting": 2,
        "waiting_prefill_tokens": 500,
        "running_context_tokens": 3000,
        "preemptions_total": 0,
        "prefill_tokens_per_s": 0.0,
        "decode_tokens_per_s": 0.0,
    }
    values.update(fields)
    return ReplicaSnapshot(replica_id=replica_id, seq=seq, **values)
