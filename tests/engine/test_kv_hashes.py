"""The engine's block hashes are exactly the router's (``BlockHasher``), however they are extended."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.block_hash import BlockHasher
from replica_agent.engine.block_pool import BlockPool
from replica_agent.engine.config import EngineConfig
from replica_agent.engine.engine import Engine
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


@settings(max_examples=200, deadline=None)
@given(
    block_size=st.sampled_from([1, 2, 4, 16]),
    seed=st.integers(0, 2**64 - 1),
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=70),
    start_block=st.integers(0, 5),
    extra_keys=st.sampled_from([(), ("lora-a",), (7, "salt")]),
)
def test_hash_tokens_chains_hash_block(
    block_size: int, seed: int, tokens: list[int], start_block: int, extra_keys: tuple[object, ...]
) -> None:
    """The one-shot hashing of ``hash_tokens`` is the streamed ``hash_block``, block after block."""
    hasher = BlockHasher(block_size, seed)
    parent = hasher.root_hash if start_block == 0 else seed ^ start_block
    expected: list[int] = []
    previous = parent
    for begin in range(start_block * block_size, len(tokens) - block_size + 1, block_size):
        previous = hasher.hash_block(previous, tokens[begin : begin + block_size], extra_keys)
        expected.append(previous)
    assert hasher.hash_tokens(tokens, extra_keys, parent=parent, start_block=start_block) == expected


def test_an_engine_takes_the_prompt_hashes_it_is_given() -> None:
    config = EngineConfig(num_blocks=64, block_size=4, max_num_batched_tokens=64, max_model_len=256)
    prompt = tuple(range(30))
    hashes = tuple(BlockHasher(config.block_size, config.hash_seed).hash_tokens(prompt))
    given_hashes, computed = Engine(config), Engine(config)
    given_hashes.add(RequestSpec("r", prompt, 0.0), hashes)
    computed.add(RequestSpec("r", prompt, 0.0))
    taken, hashed = given_hashes.get("r"), computed.get("r")
    assert taken is not None and hashed is not None
    assert taken.block_hashes == list(hashes)
    computed.kv.computed_blocks(hashed)
    assert hashed.block_hashes == taken.block_hashes
    with pytest.raises(ValueError, match="prompt block hashes"):
        Engine(config).add(RequestSpec("r", prompt, 0.0), hashes[:-1])


def test_allocate_block_refuses_a_sequence_with_free_slots() -> None:
    kv = KVCacheManager(BlockPool(4), BlockHasher(4))
    seq = Sequence(RequestSpec("r", (1, 2, 3), 0.0))
    assert kv.allocate_slots(seq, 3)
    with pytest.raises(ValueError, match="free slots"):
        kv.allocate_block(seq)
    seq.num_computed_tokens = 4
    assert kv.allocate_block(seq)
    assert len(seq.block_ids) == 2
