import pytest

from protos.block_hash import BlockHasher


def test_only_full_blocks_are_hashed() -> None:
    hasher = BlockHasher(block_size=4)
    assert len(hasher.hash_tokens(list(range(11)))) == 2
    assert hasher.hash_tokens([1, 2, 3]) == []


def test_chain_depends_on_every_earlier_token() -> None:
    hasher = BlockHasher(block_size=4)
    a = hasher.hash_tokens([1, 2, 3, 4, 5, 6, 7, 8])
    b = hasher.hash_tokens([9, 2, 3, 4, 5, 6, 7, 8])
    assert a[1] != b[1]
    assert a == hasher.hash_tokens([1, 2, 3, 4, 5, 6, 7, 8, 9])[:2]


def test_resuming_a_chain_matches_hashing_from_scratch() -> None:
    hasher = BlockHasher(block_size=4)
    tokens = list(range(20))
    full = hasher.hash_tokens(tokens)
    assert hasher.hash_tokens(tokens, parent=full[1], start_block=2) == full[2:]


def test_seed_and_extra_keys_separate_caches() -> None:
    tokens = list(range(16))
    base = BlockHasher(seed=0).hash_tokens(tokens)
    assert BlockHasher(seed=1).hash_tokens(tokens) != base
    assert BlockHasher(seed=0).hash_tokens(tokens, extra_keys=("lora-a",)) != base
    assert BlockHasher(seed=0).hash_tokens(tokens) == base


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="block_size"):
        BlockHasher(block_size=0)
    with pytest.raises(ValueError, match="seed"):
        BlockHasher(seed=-1)
