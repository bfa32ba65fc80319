"""The engine's block hashes are exactly the router's (``BlockHasher``), however they are extended."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protos.block_hash import BlockHasher
from replica_agent.engine.block_pool import BlockPool
from replica_agent.engine.kv_manager import KVCacheManager
from replica_agent.engine.request import RequestSpec, Sequence


@settings(max_examples=200, deadline=None)
@given(
    block_size=st.sampled_from([1, 2, 4, 16]),
    seed=st.integers(0, 2**64 - 1),
    prompt=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=70),
    outputs=st.lists(st.lists(st.integers(0, 2**32 - 1), max_size=20), max_size=4),
    extra_keys=st.sampled_from([(), ("lora-a",), (7, "salt")]),
)
def test_extended_hashes_match_the_block_hasher(
    block_size: int,
    seed: int,
    prompt: list[int],
    outputs: list[list[int]],
    extra_keys: tuple[object, ...],
) -> None:
    hasher = BlockHasher(block_size, seed)
    kv = KVCacheManager(BlockPool(4), hasher)
    seq = Sequence(RequestSpec("r", tuple(prompt), 0.0, extra_keys=extra_keys))
    kv.computed_blocks(seq)
    for more in outputs:
        seq.output_token_ids.extend(more)
        kv.computed_blocks(seq)
    assert seq.block_hashes == hasher.hash_tokens(seq.token_ids(), extra_keys)
