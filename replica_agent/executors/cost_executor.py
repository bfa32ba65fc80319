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
        sampled = {c.request_id: self.token_at(c.request_id, c.end) for c in plan.chunks if c.samples}
        return StepResult(sampled_token_ids=sampled, duration_s=self.cost_model.step_seconds(plan.shape()))

    def release(self, request_id: str) -> None:
        """Nothing to release: the executor keeps no per-request state."""

    def token_at(self, request_id: str, position: int) -> int:
        """The token sampled for ``request_id`` at sequence position ``position``."""
        key = f"{request_id}\x00{position}".encode()
        token = int(xxhash.xxh3_64_intdigest(key, seed=self.seed)) % self.vocab_size
        if token == self.eos_token_id:
            token = (token + 1) % self.vocab_size
        return token
