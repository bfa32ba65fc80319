"""Physical KV blocks: reference counts, an LRU free queue, and the hash -> block prefix cache.

A block whose reference count drops to zero goes to the free queue but keeps its hash, so a later
request with the same prefix can take it back; it is only forgotten when it is reused for new
tokens (evicted from the front of the queue, least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class KVBlock:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None


class BlockPool:
    def __init__(self, num_blocks: int, record_cache_events: bool = False) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.blocks = list(map(KVBlock, range(num_blocks)))
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self._record_events = record_cache_events
        # Each hash sits in at most one of the two: its last event since the previous drain wins.
        self._new_cached: dict[int, None] = {}
        self._evicted: dict[int, None] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self.blocks) - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._by_hash)

    def lookup(self, block_hash: int) -> int | None:
        return self._by_hash.get(block_hash)

    def is_free(self, block_id: int) -> bool:
        return block_id in self._free

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks (a prefix-cache hit), reviving free ones."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks from the front of the free queue, or None if too few are free."""
        if count > len(self._free):
            return None
        taken: list[int] = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                self._forget(block)
            block.ref_count = 1
            taken.append(block_id)
        return taken

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference per block. Pass a request's blocks tail first: the tail of a prefix
        is the least likely to be shared, so it should be evicted first."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise ValueError(f"block {block_id} freed more often than it was taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.block_hash is None:
                    # nothing to reuse in it: hand it out before any cached block
                    self._free.move_to_end(block_id, last=False)

    def cache(self, block_id: int, block_hash: int) -> None:
        """Register a full, computed block under its chained hash (first writer wins)."""
        block = self.blocks[block_id]
        if block.block_hash is not None or block_hash in self._by_hash:
            return
        block.block_hash = block_hash
        self._by_hash[block_hash] = block_id
        if self._record_events:
            self._evicted.pop(block_hash, None)
            self._new_cached[block_hash] = None

    def drain_cache_events(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Hashes cached and evicted since the last call (each hash in one of them: its last event)."""
        events = (tuple(self._new_cached), tuple(self._evicted))
        self._new_cached.clear()
        self._evicted.clear()
        return events

    def _forget(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        if self._by_hash.get(block.block_hash) == block.block_id:
            del self._by_hash[block.block_hash]
            if self._record_events:
                self._new_cached.pop(block.block_hash, None)
                self._evicted[block.block_hash] = None
        block.block_hash = None
