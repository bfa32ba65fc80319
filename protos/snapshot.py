"""The load snapshot a replica pushes to routers (DESIGN.md section 4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Tier(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    replica_id: str
    model: str
    gpu: str
    tier: Tier
    seq: int
    time: float
    total_blocks: int
    free_blocks: int
    cached_blocks: int
    block_size: int
    num_running: int
    num_waiting: int
    waiting_prefill_tokens: int
    running_context_tokens: int
    preemptions_total: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    admitted_ids: tuple[str, ...] = ()
    healthy: bool = True
    draining: bool = False
    new_cached_hashes: tuple[int, ...] = ()
    evicted_hashes: tuple[int, ...] = ()

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks

    @property
    def cache_fill(self) -> float:
        """Fraction of KV blocks held by live requests (0 when the replica has no blocks)."""
        return self.used_blocks / self.total_blocks if self.total_blocks else 0.0

    @property
    def queue_depth(self) -> int:
        return self.num_waiting
