"""Chained KV-block hashing, shared by the router's prefix index and every engine's prefix cache.

h_i = H(h_{i-1} || tokens of block i || extra keys), with xxh3-64 under a configured seed. Two
prompts share the hash of block i exactly when they share every token up to the end of block i
(and the same extra keys, e.g. a LoRA adapter or a cache salt), so equal hashes mean reusable KV.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import xxhash
from xxhash import xxh3_64_intdigest

DEFAULT_BLOCK_SIZE = 16
DEFAULT_HASH_SEED = 0


@dataclass(frozen=True)
class BlockHasher:
    block_size: int = DEFAULT_BLOCK_SIZE
    seed: int = DEFAULT_HASH_SEED
    root_hash: int = field(init=False)

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 unsigned bits, got {self.seed}")
        object.__setattr__(self, "root_hash", xxhash.xxh3_64_intdigest(b"fleetroute/root", seed=self.seed))

    def hash_block(self, parent: int, tokens: Sequence[int], extra_keys: tuple[object, ...] = ()) -> int:
        """Hash one full block given its parent's hash (``root_hash`` for the first block)."""
        digest = xxhash.xxh3_64(parent.to_bytes(8, "little"), seed=self.seed)
        digest.update(array("I", tokens).tobytes())
        if extra_keys:
            digest.update(repr(extra_keys).encode())
        return int(digest.intdigest())

    def hash_tokens(
        self,
        token_ids: Sequence[int],
        extra_keys: tuple[object, ...] = (),
        parent: int | None = None,
        start_block: int = 0,
    ) -> list[int]:
        """Hashes of every *full* block of ``token_ids`` starting at block ``start_block``.

        ``parent`` is the hash of block ``start_block - 1`` when resuming an earlier chain.
        """
        size = self.block_size
        first = start_block * size
        whole = (len(token_ids) - first) // size * size
        if whole <= 0:
            return []
        previous = self.root_hash if parent is None else parent
        # The tokens are converted once, and each block's hash is ``hash_block``'s in one shot
        # (xxh3 of the concatenation equals the streamed digest).
        data = array("I", token_ids[first : first + whole]).tobytes()
        extra = repr(extra_keys).encode() if extra_keys else b""
        seed, width, digest = self.seed, 4 * size, xxh3_64_intdigest
        hashes: list[int] = []
        for begin in range(0, len(data), width):
            previous = digest(previous.to_bytes(8, "little") + data[begin : begin + width] + extra, seed=seed)
            hashes.append(previous)
        return hashes
