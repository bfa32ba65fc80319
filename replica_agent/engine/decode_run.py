"""Several pure-decode steps planned at once and applied to the engine lazily (multi-step decode).

When every running request is decoding, nothing waits and a driver knows every sampled token in
advance (the cost-model executor's tokens are a hash of request id and position), the steps until
something reaches the replica are a pure function of the current state. A :class:`DecodeRun`
covers them: the driver reports each step's end (:meth:`Engine.finish_decode_step`), which returns
the requests that step finished, and the rest of the per-token work (slots, tokens, prefix-cache
blocks, throughput records) is applied only when the engine is observed or changed (``add``,
``abort``, ``snapshot``, ``get``) or the run ends, in exactly the order single steps would have
applied it, so the state seen at any step boundary is the same.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from replica_agent.engine.kv_manager import KVCacheManager, blocks_for
from replica_agent.engine.request import RequestStatus, Sequence
from replica_agent.engine.scheduler import Scheduler

TokensAt = Callable[[str, int, int], list[int]]  # request id, first position, end position
RecordStep = Callable[[int, int, float, float], None]


class DecodeRun:
    """Steps ``1..limit`` decode one token for each running sequence; step ``done + 1`` is in flight.

    Step ``s`` computes position ``start + s - 1`` of each sequence (where ``start`` is its
    computed-token count when the run began) and samples the token at position ``start + s``;
    ``tokens_at(request_id, first, end)`` gives the tokens sampled at positions ``first..end - 1``.
    A sequence leaves the batch after the step that finishes it.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        kv: KVCacheManager,
        limit: int,
        finish_steps: list[int],
        tokens_at: TokensAt,
        record: RecordStep,
    ) -> None:
        self.seqs = tuple(scheduler.running)
        self.limit = limit
        self.done = 0
        self._scheduler = scheduler
        self._kv = kv
        self._tokens_at = tokens_at
        self._record = record
        self._starts = [seq.num_computed_tokens for seq in self.seqs]
        self.batch_size = len(self.seqs)  # sequences in the step in flight
        self._start_context = sum(self._starts)  # of those sequences
        self._finishing: dict[int, list[int]] = {}  # step -> sequences it finishes, running order
        for index, step in enumerate(finish_steps):
            self._finishing.setdefault(step, []).append(index)
        self._ends: list[tuple[float, float, int]] = []  # (time, duration, batch) of finished steps
        self._scheduled = 0  # steps whose slots are in the engine
        self._updated = 0  # steps whose results (but maybe not tokens) are in the engine
        self._tokens = [0] * len(self.seqs)  # steps whose token each sequence holds
        # The block pool sees slot allocations (step s, key 2s) and prefix-cache registrations
        # (step s, key 2s + 1), in single-step order: by step, then running order. Each sequence
        # has its next one of each kind queued.
        self._pool_events: list[tuple[int, int]] = []
        block_size = kv.block_size
        for index, seq in enumerate(self.seqs):
            start = self._starts[index]
            self._pool_events.append((2 * (len(seq.block_ids) * block_size - start + 1), index))
            if kv.enable_prefix_caching:
                step = max(1, (seq.num_registered_blocks + 1) * block_size - start)
                self._pool_events.append((2 * step + 1, index))
        heapq.heapify(self._pool_events)

    @property
    def going(self) -> bool:
        """Whether a step is in flight."""
        return self.done < self.limit and self.batch_size > 0

    def context_tokens(self) -> int:
        """Cached tokens under the batch of the step in flight (what the cost model times it by)."""
        return self._start_context + self.done * self.batch_size

    def finish_step(self, now: float, duration_s: float) -> list[Sequence]:
        """Step ``done + 1`` ended at ``now``: the sequences it finishes, with their tokens, for
        the engine to retire (in running order) before the next step starts."""
        self._ends.append((now, duration_s, self.batch_size))
        self.done += 1
        finishing = self._finishing.pop(self.done, None)
        if not finishing:
            return []
        self._apply(self.done, self.done, False)
        seqs: list[Sequence] = []
        for index in finishing:
            seq = self.seqs[index]
            if seq.status is RequestStatus.RUNNING:
                self._append_tokens(index, self.done)
                seqs.append(seq)
                self.batch_size -= 1
                self._start_context -= self._starts[index]
        return seqs

    def truncate(self) -> None:
        """End the run after the step in flight (the batch is about to change)."""
        self.limit = self.done + 1

    def sync(self, tokens: bool = True) -> None:
        """Apply every finished step, and the slots of the one in flight. Without ``tokens`` the
        sampled tokens may lag (nothing that reads them may run before the next full sync)."""
        self._apply(self.done, self.done + 1 if self.going else self.done, tokens)

    def close(self) -> None:
        """Apply every finished step (the run is over: nothing is in flight)."""
        self._apply(self.done, self.done, True)

    def _apply(self, updated: int, scheduled: int, tokens: bool) -> None:
        if updated > self._updated or scheduled > self._scheduled:
            self._apply_pool(updated, scheduled)
            if scheduled > self._scheduled:
                for seq, start in zip(self.seqs, self._starts, strict=True):
                    if seq.status is RequestStatus.RUNNING:
                        seq.num_computed_tokens = start + scheduled
                self._scheduler.step += scheduled - self._scheduled
                self._scheduled = scheduled
            for now, duration_s, batch in self._ends[self._updated : updated]:
                self._record(0, batch, now, duration_s)
            self._updated = max(updated, self._updated)
        if tokens:
            for index, seq in enumerate(self.seqs):
                if self._tokens[index] < self._updated and seq.status is RequestStatus.RUNNING:
                    self._append_tokens(index, self._updated)

    def _apply_pool(self, updated: int, scheduled: int) -> None:
        events, kv, block_size = self._pool_events, self._kv, self._kv.block_size
        last = max(2 * scheduled, 2 * updated + 1)
        while events and events[0][0] <= last:
            key, index = heapq.heappop(events)
            seq = self.seqs[index]
            if seq.status is not RequestStatus.RUNNING:
                continue  # finished or aborted: its blocks are gone
            step, registers = divmod(key, 2)
            start = self._starts[index]
            if registers:
                if self._tokens[index] < step:
                    self._append_tokens(index, step)  # hashing the block reads its tokens
                seq.num_computed_tokens = start + step
                kv.register_computed(seq)
                step += block_size - (start + step) % block_size
            else:
                seq.num_computed_tokens = start + step - 1
                if not kv.allocate_slots(seq, 1):
                    raise RuntimeError("decode run outgrew the block pool")
                step += block_size
            heapq.heappush(events, (2 * step + registers, index))

    def _append_tokens(self, index: int, through: int) -> None:
        start, held = self._starts[index], self._tokens[index]
        seq = self.seqs[index]
        seq.output_token_ids.extend(self._tokens_at(seq.request_id, start + held + 1, start + through + 1))
        self._tokens[index] = through


def plan_decode_run(
    scheduler: Scheduler, kv: KVCacheManager, max_seq_tokens: int, eos: int | None
) -> tuple[int, list[int]]:
    """How many steps a decode run may cover now (0: the next step is not a plain decode step of
    every running request with nothing waiting), and the step that finishes each running request.

    The run's slot allocations must fit in the free blocks (no preemption), counting none of the
    blocks its finished requests free; and no sampled token may stop a request (only lengths do).
    """
    running = scheduler.running
    if scheduler.static or scheduler.waiting or not running:
        return 0, []
    if len(running) > scheduler.config.max_num_batched_tokens:
        return 0, []
    finish_steps: list[int] = []
    for seq in running:
        outputs = len(seq.output_token_ids)
        total = seq.num_prompt_tokens + outputs
        if not outputs or seq.num_computed_tokens != total - 1:
            return 0, []
        params = seq.spec.params
        if not params.ignore_eos and (eos is not None or params.stop_token_ids):
            return 0, []
        # step s samples output number outputs + s, which finishes the request at max_tokens or
        # at max_seq_tokens tokens
        finish_steps.append(min(params.max_tokens - outputs, max_seq_tokens - total))
    limit = max(finish_steps)
    free, block_size = kv.pool.num_free, kv.block_size
    if len(running) * (limit // block_size + 1) <= free:
        return limit, finish_steps  # enough whatever the sequences' offsets in their last blocks
    if _blocks_for_steps(running, finish_steps, limit, block_size) <= free:
        return limit, finish_steps
    low, high = 0, limit  # low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if _blocks_for_steps(running, finish_steps, middle, block_size) <= free:
            low = middle
        else:
            high = middle
    return low, finish_steps


def _blocks_for_steps(seqs: list[Sequence], finish_steps: list[int], steps: int, block_size: int) -> int:
    needed = 0
    for seq, finish in zip(seqs, finish_steps, strict=True):
        last = seq.num_computed_tokens + min(steps, finish)
        needed += max(0, blocks_for(last, block_size) - len(seq.block_ids))
    return needed
