"""What a routing policy sees: an immutable view of the fleet at one instant.

The router builds a new :class:`ClusterView` whenever a snapshot arrives or its in-flight ledger
changes, and swaps it in whole; a decision reads one view from start to end. The simulator builds
views the same way, so policies cannot tell production from simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from replica_agent.executors.cost_model import StepCostModel


@dataclass(frozen=True, slots=True)
class ReplicaSpeed:
    """How fast a replica works: its GPU cost model times ``correction``, a factor the router
    learns from the time-to-first-token it observes on that replica (1.0 until it knows better).

    ``cost_model`` is None for replicas of unknown hardware (a remote server with no GPU profile);
    they use the defaults, corrected the same way.
    """

    cost_model: StepCostModel | None
    correction: float = 1.0
    default_prefill_tokens_per_s: float = 8000.0
    default_decode_step_s: float = 0.03

    def prefill_tokens_per_s(self, running_decodes: int, mean_context: float) -> float:
        """Prefill throughput while ``running_decodes`` sequences decode alongside (tokens/s)."""
        if self.cost_model is None:
            modelled = self.default_prefill_tokens_per_s
        else:
            modelled = self.cost_model.prefill_tokens_per_s(running_decodes, mean_context)
        return modelled * self.correction

    def decode_step_s(self, batch: int, mean_context: float) -> float:
        if batch <= 0:
            return 0.0
        if self.cost_model is None:
            return self.default_decode_step_s / self.correction
        return self.cost_model.decode_step_seconds(batch, mean_context) / self.correction


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica as policies see it: its last snapshot plus what the router has sent since.

    ``pending_*`` are the router's in-flight ledger entries the replica has not yet acknowledged
    in a snapshot; ``inflight_requests`` counts every request the router has open on it.
    """

    replica_id: str
    model: str
    gpu: str
    tier: str
    speed: ReplicaSpeed
    total_blocks: int
    free_blocks: int
    block_size: int
    num_running: int
    num_waiting: int
    waiting_prefill_tokens: int
    running_context_tokens: int
    inflight_requests: int = 0
    pending_requests: int = 0
    pending_prefill_tokens: int = 0
    pending_decode_tokens: int = 0
    pending_blocks: int = 0
    healthy: bool = True
    draining: bool = False
    circuit_open: bool = False
    staleness_s: float = 0.0
    max_model_len: int = 0

    @property
    def projected_free_blocks(self) -> int:
        return max(0, self.free_blocks - self.pending_blocks)

    @property
    def projected_kv_usage(self) -> float:
        if self.total_blocks <= 0:
            return 1.0
        return 1.0 - self.projected_free_blocks / self.total_blocks

    @property
    def queued_prefill_tokens(self) -> int:
        return self.waiting_prefill_tokens + self.pending_prefill_tokens

    @property
    def queue_depth(self) -> int:
        return self.num_waiting + self.pending_requests

    @property
    def batch_size(self) -> int:
        return self.num_running + self.num_waiting + self.pending_requests


class PrefixLookup(Protocol):
    """A lookup may also offer ``match_blocks_many(replica_ids, block_hashes) -> list[int]``, the
    same answers for many replicas in one call; :func:`match_counts` uses it when present."""

    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        """How many leading blocks of ``block_hashes`` the replica holds in its prefix cache."""
        ...


class NoPrefixIndex:
    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        return 0

    def match_blocks_many(self, replica_ids: Sequence[str], block_hashes: Sequence[int]) -> list[int]:
        return [0] * len(replica_ids)


def match_counts(prefix: PrefixLookup, replica_ids: Sequence[str], block_hashes: Sequence[int]) -> list[int]:
    """``prefix.match_blocks(replica_id, block_hashes)`` for each replica id, in order."""
    if not block_hashes:
        return [0] * len(replica_ids)
    many: Callable[[Sequence[str], Sequence[int]], list[int]] | None = getattr(
        prefix, "match_blocks_many", None
    )
    if many is not None:
        return many(replica_ids, block_hashes)
    return list(map(prefix.match_blocks, replica_ids, repeat(block_hashes)))


@dataclass(frozen=True, slots=True)
class ClusterView:
    replicas: tuple[ReplicaLoad, ...]
    time: float
    prefix: PrefixLookup = field(default_factory=NoPrefixIndex)
    version: int = 0
    _by_id: dict[str, ReplicaLoad] | None = field(default=None, init=False, repr=False, compare=False)

    def get(self, replica_id: str) -> ReplicaLoad | None:
        """The replica with this id (the first, should two share it), or None."""
        by_id = self._by_id
        if by_id is None:
            # Built on first use, reversed so that the first of equal ids wins.
            by_id = {r.replica_id: r for r in reversed(self.replicas)}
            object.__setattr__(self, "_by_id", by_id)
        return by_id.get(replica_id)
