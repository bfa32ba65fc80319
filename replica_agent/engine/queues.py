"""Waiting-queue policies: which request is admitted next, and which running one yields first.

Every policy orders requests by a key (smaller = served first); the scheduler keeps the running
list in key order too, so the preemption victim is always the last running request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from replica_agent.engine.config import EngineConfig, QueuePolicyName
from replica_agent.engine.request import Sequence

SortKey = tuple[float, ...]


class QueuePolicy(Protocol):
    # Whether ``running_key`` reads a request's output tokens (which a decode run applies lazily).
    running_key_reads_outputs: bool

    def age(self, waiting: Iterable[Sequence], step: int) -> bool:
        """Update per-request waiting state once per step; True if any waiting key changed."""
        ...

    def waiting_key(self, seq: Sequence, step: int) -> SortKey: ...

    def running_key(self, seq: Sequence) -> SortKey: ...

    def admits(self, seq: Sequence, needed_blocks: int, free_blocks: int, reserved_blocks: int) -> bool:
        """Whether ``seq`` may start now, given the blocks its first chunk needs."""
        ...

    def reserve_blocks(self, seq: Sequence) -> int:
        """Blocks a running ``seq`` is still expected to need (memory-aware admission)."""
        ...


def _arrival(seq: Sequence) -> SortKey:
    return (seq.spec.arrival_time, float(seq.arrival_order))


def _predicted_output(seq: Sequence, default: int) -> int:
    predicted = seq.spec.predicted_output_tokens
    return default if predicted is None else predicted


class FcfsPolicy:
    running_key_reads_outputs = False

    def age(self, waiting: Iterable[Sequence], step: int) -> bool:
        return False

    def waiting_key(self, seq: Sequence, step: int) -> SortKey:
        return _arrival(seq)

    def running_key(self, seq: Sequence) -> SortKey:
        return _arrival(seq)

    def admits(self, seq: Sequence, needed_blocks: int, free_blocks: int, reserved_blocks: int) -> bool:
        return True

    def reserve_blocks(self, seq: Sequence) -> int:
        return 0


class PriorityPolicy(FcfsPolicy):
    """Smaller ``priority`` is served first (vLLM's convention); ties by arrival."""

    def waiting_key(self, seq: Sequence, step: int) -> SortKey:
        return (float(seq.spec.priority), *_arrival(seq))

    def running_key(self, seq: Sequence) -> SortKey:
        return self.waiting_key(seq, 0)


class MemoryAwarePolicy(FcfsPolicy):
    """FCFS that admits only when free blocks cover the prompt plus a reserve for the predicted
    output of this and every running request, so admitted work rarely has to be preempted."""

    def __init__(self, block_size: int, reserve_factor: float, default_output_tokens: int) -> None:
        self.block_size = block_size
        self.reserve_factor = reserve_factor
        self.default_output_tokens = default_output_tokens

    def _reserved_output(self, seq: Sequence) -> int:
        guess = _predicted_output(seq, self.default_output_tokens) * self.reserve_factor
        return min(int(guess), seq.spec.params.max_tokens)

    def reserve_blocks(self, seq: Sequence) -> int:
        expected_tokens = seq.num_prompt_tokens + self._reserved_output(seq)
        return max(0, -(-expected_tokens // self.block_size) - len(seq.block_ids))

    def admits(self, seq: Sequence, needed_blocks: int, free_blocks: int, reserved_blocks: int) -> bool:
        own_reserve = -(-self._reserved_output(seq) // self.block_size)
        return needed_blocks + own_reserve + reserved_blocks <= free_blocks


class PredictedSjfPolicy(FcfsPolicy):
    """Shortest predicted remaining output first; a request left waiting for ``starvation_steps``
    steps is promoted ahead of everyone for ``promotion_steps`` steps."""

    running_key_reads_outputs = True

    def __init__(self, starvation_steps: int, promotion_steps: int, default_output_tokens: int) -> None:
        self.starvation_steps = starvation_steps
        self.promotion_steps = promotion_steps
        self.default_output_tokens = default_output_tokens

    def age(self, waiting: Iterable[Sequence], step: int) -> bool:
        changed = False
        for seq in waiting:
            if step == seq.promoted_until_step:
                changed = True
            if step - seq.idle_since_step >= self.starvation_steps:
                seq.promoted_until_step = step + self.promotion_steps
                seq.idle_since_step = step + self.promotion_steps
                changed = True
        return changed

    def _remaining(self, seq: Sequence) -> float:
        return float(max(_predicted_output(seq, self.default_output_tokens) - seq.num_output_tokens, 0))

    def waiting_key(self, seq: Sequence, step: int) -> SortKey:
        promoted = 0.0 if step < seq.promoted_until_step else 1.0
        return (promoted, self._remaining(seq), *_arrival(seq))

    def running_key(self, seq: Sequence) -> SortKey:
        # the request predicted to run longest yields first when memory runs out
        return (self._remaining(seq), *_arrival(seq))


def make_queue_policy(config: EngineConfig) -> QueuePolicy:
    match config.queue_policy:
        case QueuePolicyName.FCFS:
            return FcfsPolicy()
        case QueuePolicyName.PRIORITY:
            return PriorityPolicy()
        case QueuePolicyName.MEMORY_AWARE:
            return MemoryAwarePolicy(
                config.block_size, config.output_reserve_factor, config.default_predicted_output_tokens
            )
        case QueuePolicyName.PREDICTED_SJF:
            return PredictedSjfPolicy(
                config.sjf_starvation_steps,
                config.sjf_promotion_steps,
                config.default_predicted_output_tokens,
            )
