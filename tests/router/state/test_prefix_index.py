from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.state.prefix_index import PrefixIndex
from tests.router.state.helpers import snapshot


def test_empty_index_matches_nothing() -> None:
    assert PrefixIndex().match_blocks("r1", [1, 2, 3]) == 0


def test_snapshot_events_add_and_evict_hashes() -> None:
    index = PrefixIndex()
    index.apply_snapshot(snapshot(new_cached_hashes=(1, 2, 3, 4)))
    assert index.match_blocks("r1", [1, 2, 3, 9]) == 3
    assert index.match_blocks("r2", [1, 2]) == 0
    index.apply_snapshot(snapshot(seq=2, evicted_hashes=(2,)))
    assert index.match_blocks("r1", [1, 2, 3]) == 1
    assert index.confirmed_hashes("r1") == frozenset({1, 3, 4})


def test_match_counts_leading_hashes_only() -> None:
    index = PrefixIndex()
    index.apply_events("r1", cached=[2, 3], evicted=[])
    assert index.match_blocks("r1", [1, 2, 3]) == 0


def test_optimistic_insert_expires_after_ttl() -> None:
    index = PrefixIndex(optimistic_ttl_s=2.0)
    index.note_routed("r1", [1, 2], now=10.0)
    assert index.match_blocks_at("r1", [1, 2, 3], 11.9) == 2
    assert index.match_blocks_at("r1", [1, 2, 3], 12.0) == 0
    assert index.at(11.0).match_blocks("r1", [1, 2]) == 2
    index.expire(12.0)
    assert index.size("r1") == 0


def test_match_blocks_without_time_uses_latest_known_time() -> None:
    index = PrefixIndex(optimistic_ttl_s=2.0)
    index.note_routed("r1", [1], now=0.0)
    assert index.match_blocks("r1", [1]) == 1
    index.expire(5.0)
    assert index.match_blocks("r1", [1]) == 0


def test_snapshot_confirms_optimistic_hashes_for_good() -> None:
    index = PrefixIndex(optimistic_ttl_s=1.0)
    index.note_routed("r1", [1, 2, 3], now=0.0)
    index.apply_events("r1", cached=[1, 2], evicted=[])
    index.expire(100.0)
    assert index.match_blocks_at("r1", [1, 2, 3], 100.0) == 2
    assert index.optimistic_hashes("r1", 0.5) == frozenset()


def test_routing_again_refreshes_optimistic_expiry() -> None:
    index = PrefixIndex(optimistic_ttl_s=2.0)
    index.note_routed("r1", [1], now=0.0)
    index.note_routed("r1", [1], now=1.5)
    index.expire(2.5)
    assert index.match_blocks_at("r1", [1], 3.0) == 1


def test_eviction_removes_optimistic_entry_too() -> None:
    index = PrefixIndex()
    index.note_routed("r1", [1, 2], now=0.0)
    index.apply_events("r1", cached=[], evicted=[1])
    assert index.match_blocks_at("r1", [1, 2], 0.0) == 0


def test_cap_evicts_optimistic_first_then_least_recently_used() -> None:
    index = PrefixIndex(max_hashes_per_replica=3)
    index.apply_events("r1", cached=[1, 2, 3], evicted=[])
    index.note_routed("r1", [1], now=0.0)  # touches 1: now 2 is the least recently used
    index.apply_events("r1", cached=[4], evicted=[])
    assert index.confirmed_hashes("r1") == frozenset({1, 3, 4})
    index.note_routed("r1", [7, 8], now=0.0)
    assert index.size("r1") == 3
    assert index.optimistic_hashes("r1", 0.0) == frozenset()
    index.apply_events("r1", cached=[], evicted=[3])
    index.note_routed("r1", [7, 8], now=0.0)
    assert index.size("r1") == 3 and index.optimistic_hashes("r1", 0.0) == frozenset({8})


def test_forget_drops_replica() -> None:
    index = PrefixIndex()
    index.apply_events("r1", cached=[1], evicted=[])
    index.forget("r1")
    index.forget("never-seen")
    assert index.match_blocks("r1", [1]) == 0 and index.size("r1") == 0


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        PrefixIndex(max_hashes_per_replica=0)
    with pytest.raises(ValueError):
        PrefixIndex(optimistic_ttl_s=0.0)


HASHES = st.integers(0, 15)
Operation = tuple[str, str, list[int], list[int], float]
OPERATIONS = st.tuples(
    st.sampled_from(["snapshot", "routed", "expire", "forget"]),
    st.sampled_from(["r1", "r2"]),
    st.lists(HASHES, max_size=6),
    st.lists(HASHES, max_size=6),
    st.floats(0.0, 3.0),
)


class ReferenceIndex:
    """The same rules with plain sets and dicts and no memory cap."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.confirmed: dict[str, set[int]] = {}
        self.optimistic: dict[str, dict[int, float]] = {}

    def apply(self, op: Operation, now: float) -> None:
        kind, replica, first, second, _ = op
        confirmed = self.confirmed.setdefault(replica, set())
        optimistic = self.optimistic.setdefault(replica, {})
        if kind == "snapshot":
            evicted, cached = set(second) - set(first), first
            confirmed.difference_update(evicted)
            for block_hash in evicted:
                optimistic.pop(block_hash, None)
            confirmed.update(cached)
            for block_hash in cached:
                optimistic.pop(block_hash, None)
        elif kind == "routed":
            for block_hash in first:
                if block_hash not in confirmed:
                    optimistic[block_hash] = now + self.ttl
        elif kind == "forget":
            confirmed.clear()
            optimistic.clear()

    def match(self, replica: str, hashes: list[int], now: float) -> int:
        matched = 0
        for block_hash in hashes:
            held = block_hash in self.confirmed.get(replica, set())
            if not held and self.optimistic.get(replica, {}).get(block_hash, -1.0) <= now:
                break
            matched += 1
        return matched


def run(index: PrefixIndex, op: Operation, now: float) -> None:
    kind, replica, first, second, _ = op
    if kind == "snapshot":
        index.apply_events(replica, cached=first, evicted=set(second) - set(first))
    elif kind == "routed":
        index.note_routed(replica, first, now)
    elif kind == "expire":
        index.expire(now)
    else:
        index.forget(replica)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(OPERATIONS, max_size=40), queries=st.lists(st.lists(HASHES, max_size=8), min_size=1))
def test_index_agrees_with_reference(ops: list[Operation], queries: list[list[int]]) -> None:
    index, reference = PrefixIndex(optimistic_ttl_s=2.0), ReferenceIndex(ttl=2.0)
    now = 0.0
    for op in ops:
        now += op[4]
        run(index, op, now)
        reference.apply(op, now)
        for replica in ("r1", "r2"):
            for query in queries:
                assert index.match_blocks_at(replica, query, now) == reference.match(replica, query, now)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(OPERATIONS, max_size=40), cap=st.integers(1, 6), query=st.lists(HASHES, max_size=8))
def test_capped_index_stays_bounded_and_never_invents_hashes(
    ops: list[Operation], cap: int, query: list[int]
) -> None:
    index, reference = PrefixIndex(max_hashes_per_replica=cap, optimistic_ttl_s=2.0), ReferenceIndex(2.0)
    now = 0.0
    for op in ops:
        now += op[4]
        run(index, op, now)
        reference.apply(op, now)
        for replica in ("r1", "r2"):
            assert index.size(replica) <= cap
            assert not index.confirmed_hashes(replica) & index.optimistic_hashes(replica, -1.0)
            assert index.match_blocks_at(replica, query, now) <= reference.match(replica, query, now)


@pytest.mark.parametrize("seed", range(10))
def test_matching_many_replicas_at_once_is_matching_each(seed: int) -> None:
    rng = random.Random(seed)
    index = PrefixIndex(optimistic_ttl_s=1.0)
    replica_ids = [f"r{i}" for i in range(8)]
    for replica_id in replica_ids[:6]:
        index.apply_events(replica_id, cached=range(1, rng.randint(1, 30)), evicted=[])
        index.note_routed(replica_id, range(1, rng.randint(1, 40)), now=rng.uniform(0.0, 2.0))
        index.apply_events(replica_id, cached=[], evicted=rng.sample(range(1, 40), 3))
    hashes = list(range(1, 45))
    for now in (0.5, 1.5, 2.5):
        expected = [index.match_blocks_at(r, hashes, now) for r in replica_ids]
        assert index.match_blocks_many_at(replica_ids, hashes, now) == expected
        assert index.at(now).match_blocks_many(replica_ids, hashes) == expected
    assert index.match_blocks_many(replica_ids, []) == [0] * 8
    assert index.match_blocks_many(replica_ids, hashes) == [
        index.match_blocks(r, hashes) for r in replica_ids
    ]
