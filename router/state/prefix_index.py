"""Which KV blocks each replica holds in its prefix cache, as the router best knows it.

Two sources feed it, in the manner of SGLang's approximate radix tree:

- *confirmed* hashes, from the ``new_cached_hashes`` / ``evicted_hashes`` of the replica's
  snapshots, kept until the replica reports them evicted (or the per-replica cap pushes them out,
  least recently used first);
- *optimistic* hashes, inserted the moment the router sends a request there (the replica is about to
  compute those blocks), which count only for ``optimistic_ttl_s`` unless a snapshot confirms them:
  the replica may refuse the request or evict the blocks before reporting them.

Block hashes are chained (each covers its whole prefix, see :mod:`protos.block_hash`), so the
longest cached prefix of a request is simply the number of its leading hashes present. There is no
tree to walk: one set lookup per block.

The index is live and mutable; a :class:`ClusterView` reads it through :meth:`PrefixIndex.at`,
which pins the time optimistic entries are judged at, not their contents (copying millions of
hashes per view would cost far more than the occasional race it avoids).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from protos.snapshot import ReplicaSnapshot

DEFAULT_MAX_HASHES_PER_REPLICA = 1_000_000
DEFAULT_OPTIMISTIC_TTL_S = 10.0


@dataclass(slots=True)
class _ReplicaBlocks:
    confirmed: OrderedDict[int, None] = field(default_factory=OrderedDict)  # least recently used first
    optimistic: OrderedDict[int, float] = field(default_factory=OrderedDict)  # hash -> expiry, oldest first

    def __len__(self) -> int:
        return len(self.confirmed) + len(self.optimistic)

    def holds(self, block_hash: int, now: float) -> bool:
        if block_hash in self.confirmed:
            return True
        expiry = self.optimistic.get(block_hash)
        return expiry is not None and expiry > now


class PrefixIndex:
    """Per replica, the block hashes it is known (or, for a while, expected) to hold."""

    def __init__(
        self,
        max_hashes_per_replica: int = DEFAULT_MAX_HASHES_PER_REPLICA,
        optimistic_ttl_s: float = DEFAULT_OPTIMISTIC_TTL_S,
    ) -> None:
        if max_hashes_per_replica < 1:
            raise ValueError(f"max_hashes_per_replica must be at least 1, got {max_hashes_per_replica}")
        if not optimistic_ttl_s > 0:
            raise ValueError(f"optimistic_ttl_s must be positive, got {optimistic_ttl_s}")
        self.max_hashes_per_replica = max_hashes_per_replica
        self.optimistic_ttl_s = optimistic_ttl_s
        self._replicas: dict[str, _ReplicaBlocks] = {}
        self._now = float("-inf")  # the latest time any call has told the index

    # --- PrefixLookup --------------------------------------------------------------------------

    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        """Leading blocks of ``block_hashes`` the replica holds, judged at the latest known time."""
        return self.match_blocks_at(replica_id, block_hashes, self._now)

    def match_blocks_at(self, replica_id: str, block_hashes: Sequence[int], now: float) -> int:
        blocks = self._replicas.get(replica_id)
        if blocks is None:
            return 0
        matched = 0
        for block_hash in block_hashes:
            if not blocks.holds(block_hash, now):
                break
            matched += 1
        return matched

    def match_blocks_many(self, replica_ids: Sequence[str], block_hashes: Sequence[int]) -> list[int]:
        return self.match_blocks_many_at(replica_ids, block_hashes, self._now)

    def match_blocks_many_at(
        self, replica_ids: Sequence[str], block_hashes: Sequence[int], now: float
    ) -> list[int]:
        """``match_blocks_at`` for each replica id, in order (``_ReplicaBlocks.holds`` inlined: most
        replicas lack the first block, and the call per block would cost more than the lookup)."""
        if not block_hashes:
            return [0] * len(replica_ids)
        first = block_hashes[0]
        replicas = self._replicas
        counts: list[int] = []
        for replica_id in replica_ids:
            blocks = replicas.get(replica_id)
            matched = 0
            if blocks is not None:
                confirmed, optimistic = blocks.confirmed, blocks.optimistic
                if first in confirmed or (first in optimistic and optimistic[first] > now):
                    for block_hash in block_hashes:
                        if block_hash not in confirmed:
                            expiry = optimistic.get(block_hash)
                            if expiry is None or expiry <= now:
                                break
                        matched += 1
            counts.append(matched)
        return counts

    def at(self, now: float) -> PrefixAt:
        """A :class:`PrefixLookup` that judges optimistic entries at ``now``."""
        return PrefixAt(self, now)

    # --- updates -------------------------------------------------------------------------------

    def apply_snapshot(self, snapshot: ReplicaSnapshot) -> None:
        """Apply a snapshot's cache events: evictions first, then new blocks (the agent reports the
        net change since its previous snapshot, so a hash is never in both)."""
        if not snapshot.new_cached_hashes and not snapshot.evicted_hashes:
            return
        self.apply_events(snapshot.replica_id, snapshot.new_cached_hashes, snapshot.evicted_hashes)

    def apply_events(self, replica_id: str, cached: Iterable[int], evicted: Iterable[int]) -> None:
        blocks = self._replicas.setdefault(replica_id, _ReplicaBlocks())
        for block_hash in evicted:
            blocks.confirmed.pop(block_hash, None)
            blocks.optimistic.pop(block_hash, None)
        for block_hash in cached:
            blocks.optimistic.pop(block_hash, None)
            blocks.confirmed[block_hash] = None
            blocks.confirmed.move_to_end(block_hash)
        self._enforce_cap(blocks)

    def note_routed(self, replica_id: str, block_hashes: Iterable[int], now: float) -> None:
        """The router just sent a request with ``block_hashes`` to the replica: expect them there
        until ``now + optimistic_ttl_s`` unless a snapshot confirms them first."""
        self._advance(now)
        blocks = self._replicas.setdefault(replica_id, _ReplicaBlocks())
        expiry = now + self.optimistic_ttl_s
        for block_hash in block_hashes:
            if block_hash in blocks.confirmed:
                blocks.confirmed.move_to_end(block_hash)
                continue
            blocks.optimistic.pop(block_hash, None)
            blocks.optimistic[block_hash] = expiry
        self._enforce_cap(blocks)

    def expire(self, now: float) -> None:
        """Drop optimistic entries whose time is up (they already stopped matching; this frees them)."""
        self._advance(now)
        for blocks in self._replicas.values():
            optimistic = blocks.optimistic
            while optimistic:
                block_hash, expiry = next(iter(optimistic.items()))
                if expiry > now:
                    break
                del optimistic[block_hash]

    def forget(self, replica_id: str) -> None:
        """Drop everything known about the replica (removed, or restarted with an empty cache)."""
        self._replicas.pop(replica_id, None)

    # --- inspection ----------------------------------------------------------------------------

    def size(self, replica_id: str) -> int:
        """Hashes stored for the replica, confirmed and optimistic (expired ones until purged)."""
        blocks = self._replicas.get(replica_id)
        return 0 if blocks is None else len(blocks)

    def confirmed_hashes(self, replica_id: str) -> frozenset[int]:
        blocks = self._replicas.get(replica_id)
        return frozenset() if blocks is None else frozenset(blocks.confirmed)

    def optimistic_hashes(self, replica_id: str, now: float) -> frozenset[int]:
        """Optimistic hashes still counting at ``now``."""
        blocks = self._replicas.get(replica_id)
        if blocks is None:
            return frozenset()
        return frozenset(h for h, expiry in blocks.optimistic.items() if expiry > now)

    def _advance(self, now: float) -> None:
        self._now = max(self._now, now)

    def _enforce_cap(self, blocks: _ReplicaBlocks) -> None:
        # Optimistic entries go first, oldest first: they are guesses, nearest to expiring.
        excess = len(blocks) - self.max_hashes_per_replica
        while excess > 0 and blocks.optimistic:
            blocks.optimistic.popitem(last=False)
            excess -= 1
        while excess > 0:
            blocks.confirmed.popitem(last=False)
            excess -= 1


@dataclass(frozen=True, slots=True)
class PrefixAt:
    """The live index, with optimistic entries judged at a fixed time (one view's ``time``)."""

    index: PrefixIndex
    now: float

    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        return self.index.match_blocks_at(replica_id, block_hashes, self.now)

    def match_blocks_many(self, replica_ids: Sequence[str], block_hashes: Sequence[int]) -> list[int]:
        return self.index.match_blocks_many_at(replica_ids, block_hashes, self.now)
