"""The cost-model GPU: times each step with :class:`StepCostModel` and samples deterministic tokens.

No tensors are computed. A sampled token is a hash of (seed, request id, position), so the same
request yields the same tokens however it is batched, preempted or recomputed, and the EOS token is
never produced (requests end on ``max_tokens``, which keeps output lengths under the caller's
control in simulations and benchmarks).
"""

from __future__ import annotations

import xxhash

from replica_agent.engine.step import StepPlan, StepResult
from replica_agent.executors.cost_model import StepCostModel


class CostModelExecutor:
    """Implements the ``Executor`` protocol (stateless: ``release`` has nothing to forget)."""

    def __init__(
        self, cost_model: StepCostModel, vocab_size: int, eos_token_id: int | None = None, seed: int = 0
    ) -> None:
        if vocab_size < (2 if eos_token_id is not None else 1):
            raise ValueError(f"vocab_size too small for sampling around EOS: {vocab_size}")
        if eos_token_id is not None and not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id {eos_token_id} outside the vocabulary [0, {vocab_size})")
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must fit in 64 unsigned bits, got {seed}")
        self.cost_model = cost_model
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.seed = seed

    def execute(self, plan: StepPlan) -> StepResult:
        seed, vocab, eos = self.seed, self.vocab_size, self.eos_token_id
        sampled: dict[str, int] = {}
        for chunk in plan.chunks:
            if chunk.samples:  # token_at, inlined
                request_id = chunk.request_id
                key = f"{request_id}\x00{chunk.start + len(chunk.token_ids)}".encode()
                token: int = xxhash.xxh3_64_intdigest(key, seed=seed) % vocab
                sampled[request_id] = (token + 1) % vocab if token == eos else token
        return StepResult(sampled, self.cost_model.plan_seconds(plan))

    def release(self, request_id: str) -> None:
        """Nothing to release: the executor keeps no per-request state."""

    def tokens_at(self, request_id: str, first: int, end: int) -> list[int]:
        """``token_at(request_id, p)`` for ``p`` in ``first..end - 1`` (a decode run's tokens)."""
        # the key of ``token_at``, built from the id's bytes once per call
        prefix, seed, vocab, eos = f"{request_id}\x00".encode(), self.seed, self.vocab_size, self.eos_token_id
        digest = xxhash.xxh3_64_intdigest
        tokens: list[int] = [digest(prefix + b"%d" % p, seed) % vocab for p in range(first, end)]
        if eos is not None and eos in tokens:
            tokens = [(t + 1) % vocab if t == eos else t for t in tokens]
        return tokens

    def token_at(self, request_id: str, position: int) -> int:
        """The token sampled for ``request_id`` at sequence position ``position``."""
        key = f"{request_id}\x00{position}".encode()
        token: int = xxhash.xxh3_64_intdigest(key, seed=self.seed) % self.vocab_size
        if token == self.eos_token_id:
            token = (token + 1) % self.vocab_size
        return token
