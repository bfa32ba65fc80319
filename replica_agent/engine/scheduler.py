"""Continuous-batching scheduler: computed tokens catch up with total tokens under a token budget.

Every step, running requests are served first (in the queue policy's order), each asking for all
of its uncomputed tokens up to the remaining budget: a decode asks for one, a prefill for its next
chunk. When blocks run out, the last running request in policy order is preempted by recompute
(its blocks freed, its computed tokens reset). Waiting requests are admitted only in a step that
preempted nothing. One plan may be in flight at a time; tokens are counted as computed when they
are scheduled, and sampled tokens arrive with ``update``.

``static`` batching is the pre-continuous baseline: a batch is admitted only when nothing runs,
each member reserves KV for its prompt plus ``max_tokens`` up front, prompts are padded to the
batch's longest, and finished members keep paying for a decode slot until the whole batch is done.
"""

from __future__ import annotations

from bisect import insort

from replica_agent.engine.config import BatchingMode, EngineConfig
from replica_agent.engine.kv_manager import KVCacheManager
from replica_agent.engine.queues import QueuePolicy
from replica_agent.engine.request import RequestStatus, Sequence
from replica_agent.engine.step import ScheduledChunk, SeqShape, StepPlan


class Scheduler:
    def __init__(self, config: EngineConfig, kv: KVCacheManager, policy: QueuePolicy) -> None:
        self.config = config
        self.kv = kv
        self.policy = policy
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.step = 0
        self.num_preemptions = 0
        self.admitted_ids: list[str] = []
        self.static = config.batching is BatchingMode.STATIC
        self.static_batch: list[Sequence] = []

    def enqueue(self, seq: Sequence) -> None:
        seq.idle_since_step = self.step
        insort(self.waiting, seq, key=lambda s: self.policy.waiting_key(s, self.step))

    def remove(self, seq: Sequence) -> None:
        """Take ``seq`` out of whichever queue holds it and free its blocks."""
        if seq.status is RequestStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)

    def schedule(self) -> StepPlan | None:
        self.step += 1
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []
        running = self.running
        chunked = self.config.enable_chunked_prefill
        block_size = self.kv.block_size
        index = 0
        while index < len(running) and budget > 0:
            seq = running[index]
            computed = seq.num_computed_tokens
            num_new = seq.num_prompt_tokens + len(seq.output_token_ids) - computed
            if num_new > budget:
                if not chunked:
                    index += 1
                    continue
                num_new = budget
            # slots already held need no allocation (the usual decode step)
            if computed + num_new > len(seq.block_ids) * block_size and not self._make_room(
                seq, num_new, preempted
            ):
                break
            outputs = seq.output_token_ids
            if num_new == 1 and outputs and computed + 1 == seq.num_prompt_tokens + len(outputs):
                # _chunk, inlined for a decode
                seq.num_computed_tokens = computed + 1
                table = seq.block_table()
                chunks.append(ScheduledChunk(seq.request_id, computed, (outputs[-1],), table, False, True))
            else:
                chunks.append(self._chunk(seq, num_new))
            budget -= num_new
            index += 1
        padding: list[SeqShape] = []
        if not preempted and not (self.static and self.running):
            padding = self._admit(budget, chunks)
        if not chunks:
            return None
        if self.static:
            padding += [SeqShape(1, s.num_tokens) for s in self.static_batch if s.status.finished]
        return StepPlan(self.step, tuple(chunks), tuple(preempted), tuple(padding))

    def admit_after_decodes(self, num_decodes: int) -> list[ScheduledChunk]:
        """The rest of a step that so far decodes ``num_decodes`` running requests without
        preempting (a decode run's step, whose slots are already allocated and counted in
        ``step``): the chunks of the waiting requests it admits, as ``schedule`` would add them."""
        chunks: list[ScheduledChunk] = []
        self._admit(self.config.max_num_batched_tokens - num_decodes, chunks)
        return chunks

    def _make_room(self, seq: Sequence, num_new: int, preempted: list[str]) -> bool:
        """Allocate slots for ``seq``, preempting from the back of the running list as needed.
        False when ``seq`` itself had to yield."""
        while not self.kv.allocate_slots(seq, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.status = RequestStatus.PREEMPTED
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.enqueue(seq)

    def _admit(self, budget: int, chunks: list[ScheduledChunk]) -> list[SeqShape]:
        """Start waiting requests; returns the prompt padding a new static batch pays for."""
        static = self.static
        if static:
            self.static_batch.clear()
        if self.policy.age(self.waiting, self.step):
            self.waiting.sort(key=lambda s: self.policy.waiting_key(s, self.step))
        if not self.waiting and not static:
            return []
        reserved = sum(self.policy.reserve_blocks(s) for s in self.running)
        while self.waiting and len(self.running) < self.config.max_num_seqs and (budget > 0 or static):
            seq = self.waiting[0]
            computed = self.kv.computed_blocks(seq)
            remaining = seq.num_tokens - len(computed) * self.kv.block_size
            if not self.config.enable_chunked_prefill and remaining > budget:
                break
            to_allocate = min(remaining, budget)
            if static:
                to_allocate = remaining + seq.spec.params.max_tokens - seq.num_output_tokens
            needed = self.kv.blocks_needed(seq, to_allocate, computed)
            if self.running and not self.policy.admits(seq, needed, self.kv.pool.num_free, reserved):
                break
            if not self.kv.allocate_slots(seq, to_allocate, computed):
                break
            self.waiting.pop(0)
            self._start(seq, len(computed) * self.kv.block_size)
            reserved += self.policy.reserve_blocks(seq)
            num_new = min(remaining, budget)
            if num_new > 0:
                chunks.append(self._chunk(seq, num_new))
                budget -= num_new
        if not static:
            return []
        self.static_batch = list(self.running)
        longest = max((s.num_prompt_tokens for s in self.static_batch), default=0)
        return [
            SeqShape(longest - s.num_prompt_tokens, 0)
            for s in self.static_batch
            if s.num_prompt_tokens < longest
        ]

    def _start(self, seq: Sequence, cached_tokens: int) -> None:
        if seq.status is RequestStatus.WAITING:
            seq.num_cached_prompt_tokens = min(cached_tokens, seq.num_prompt_tokens)
            self.admitted_ids.append(seq.request_id)
        seq.status = RequestStatus.RUNNING
        insort(self.running, seq, key=self.policy.running_key)

    def _chunk(self, seq: Sequence, num_new: int) -> ScheduledChunk:
        start = seq.num_computed_tokens
        end = start + num_new
        seq.num_computed_tokens = end
        outputs = seq.output_token_ids
        num_tokens = seq.num_prompt_tokens + len(outputs)
        if num_new == 1 and end == num_tokens and outputs:
            return ScheduledChunk(seq.request_id, start, (outputs[-1],), seq.block_table(), False, True)
        return ScheduledChunk(
            request_id=seq.request_id,
            start=start,
            token_ids=seq.token_slice(start, end),
            block_ids=seq.block_table(),
            is_prefill=True,
            samples=end == num_tokens,
        )
