"""Per-request KV bookkeeping on top of the block pool: prefix-cache hits, slot allocation, freeing."""

from __future__ import annotations

from protos.block_hash import BlockHasher
from replica_agent.engine.block_pool import BlockPool
from replica_agent.engine.request import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class KVCacheManager:
    def __init__(self, pool: BlockPool, hasher: BlockHasher, enable_prefix_caching: bool = True) -> None:
        self.pool = pool
        self.hasher = hasher
        self.block_size = hasher.block_size
        self.enable_prefix_caching = enable_prefix_caching

    def computed_blocks(self, seq: Sequence) -> list[int]:
        """Leading blocks of ``seq`` already in the prefix cache.

        Never the whole sequence: its last token is always recomputed so the step has logits to
        sample from.
        """
        if not self.enable_prefix_caching:
            return []
        self._extend_hashes(seq)
        limit = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for block_hash in seq.block_hashes[:limit]:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def blocks_needed(self, seq: Sequence, num_new_tokens: int, computed: list[int] | None = None) -> int:
        """Free blocks that allocating ``num_new_tokens`` more slots would consume."""
        if not computed:
            total = blocks_for(seq.num_computed_tokens + num_new_tokens, self.block_size)
            return max(0, total - len(seq.block_ids))
        held = len(seq.block_ids) + len(computed)
        base = seq.num_computed_tokens + len(computed) * self.block_size
        fresh = max(0, blocks_for(base + num_new_tokens, self.block_size) - held)
        revived = sum(1 for b in computed if self.pool.is_free(b))
        return fresh + revived

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, computed: list[int] | None = None) -> bool:
        """Give ``seq`` room for ``num_new_tokens`` more tokens (after taking ``computed`` prefix
        blocks). Returns False, changing nothing, when the pool is too small."""
        computed = computed or []
        if self.blocks_needed(seq, num_new_tokens, computed) > self.pool.num_free:
            return False
        if computed:
            self.pool.touch(computed)
            seq.block_ids.extend(computed)
            seq.block_table_cache = None
            seq.num_computed_tokens += len(computed) * self.block_size
            seq.num_registered_blocks = len(seq.block_ids)
        total = blocks_for(seq.num_computed_tokens + num_new_tokens, self.block_size)
        fresh = self.pool.allocate(max(0, total - len(seq.block_ids)))
        if fresh is None:
            raise RuntimeError("block pool shrank between check and allocation")
        if fresh:
            seq.block_ids.extend(fresh)
            seq.block_table_cache = None
        return True

    def allocate_block(self, seq: Sequence) -> bool:
        """``allocate_slots(seq, 1)`` for a sequence whose blocks are all full (a decode step
        crossing into a new block). Returns False, changing nothing, when no block is free."""
        if seq.num_computed_tokens < len(seq.block_ids) * self.block_size:
            raise ValueError(f"request {seq.request_id!r} still has free slots in its last block")
        fresh = self.pool.allocate(1)
        if fresh is None:
            return False
        seq.block_ids += fresh
        seq.block_table_cache = None
        return True

    def register_computed(self, seq: Sequence) -> None:
        """Publish every block that is now full of computed tokens to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_ids))
        if full <= seq.num_registered_blocks:
            return
        self._extend_hashes(seq)
        block_ids, block_hashes, cache = seq.block_ids, seq.block_hashes, self.pool.cache
        for index in range(seq.num_registered_blocks, full):
            cache(block_ids[index], block_hashes[index])
        seq.num_registered_blocks = full

    def free(self, seq: Sequence) -> None:
        self.pool.free(reversed(seq.block_ids))
        seq.block_ids.clear()
        seq.block_table_cache = None
        seq.num_registered_blocks = 0

    def _extend_hashes(self, seq: Sequence) -> None:
        known = len(seq.block_hashes)
        size = self.block_size
        if (known + 1) * size > seq.num_tokens:
            return
        previous = seq.block_hashes[-1] if known else self.hasher.root_hash
        seq.block_hashes += self.hasher.hash_tokens(
            seq.token_slice(known * size, seq.num_tokens), seq.spec.extra_keys, parent=previous
        )
