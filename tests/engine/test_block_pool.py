import pytest

from replica_agent.engine.block_pool import BlockPool


def test_allocate_and_free_keep_counts_consistent() -> None:
    pool = BlockPool(4)
    taken = pool.allocate(3)
    assert taken == [0, 1, 2]
    assert (pool.num_used, pool.num_free) == (3, 1)
    assert pool.allocate(2) is None
    pool.free(reversed(taken))
    assert (pool.num_used, pool.num_free) == (0, 4)


def test_cached_block_survives_free_until_reused() -> None:
    pool = BlockPool(2)
    [block] = pool.allocate(1) or []
    pool.cache(block, 1234)
    pool.free([block])
    assert pool.lookup(1234) == block
    pool.touch([block])
    assert pool.blocks[block].ref_count == 1
    assert pool.num_free == 1
    pool.free([block])
    # uncached blocks are handed out before cached ones
    assert pool.allocate(1) == [1]
    assert pool.lookup(1234) == block
    assert pool.allocate(1) == [block]
    assert pool.lookup(1234) is None


def test_lru_eviction_order_follows_free_order() -> None:
    pool = BlockPool(3, record_cache_events=True)
    blocks = pool.allocate(3) or []
    for block, block_hash in zip(blocks, (10, 11, 12), strict=True):
        pool.cache(block, block_hash)
    pool.free([blocks[2]])
    pool.free([blocks[0]])
    pool.free([blocks[1]])
    assert pool.allocate(1) == [blocks[2]]
    cached, evicted = pool.drain_cache_events()
    assert cached == (10, 11)  # 12 was cached and evicted since the last drain: its last event wins
    assert evicted == (12,)
    assert pool.drain_cache_events() == ((), ())
    pool.free([blocks[2]])
    block = (pool.allocate(1) or [])[0]
    pool.cache(block, 12)
    assert pool.drain_cache_events() == ((12,), ())


def test_double_free_is_rejected() -> None:
    pool = BlockPool(1)
    blocks = pool.allocate(1) or []
    pool.free(blocks)
    with pytest.raises(ValueError, match="freed more often"):
        pool.free(blocks)


def test_first_writer_wins_for_duplicate_hash() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2) or []
    pool.cache(a, 5)
    pool.cache(b, 5)
    assert pool.lookup(5) == a
    assert pool.blocks[b].block_hash is None
