"""Several pure-decode steps planned at once and applied to the engine lazily (multi-step decode).

When every running request is decoding and a driver knows every sampled token in advance (the
cost-model executor's tokens are a hash of request id and position), the steps until something
reaches the replica are a pure function of the current state. A :class:`DecodeRun` covers them:
the driver reports each step's end (:meth:`Engine.finish_decode_step`), which returns the requests
that step finished, and the rest of the per-token work (slots, tokens, prefix-cache blocks,
throughput records) is applied only when the engine is observed or changed (``abort``,
``snapshot``, ``get``), when requests are admitted, or when the run ends, in exactly the order
single steps would have applied it, so the state seen at any step boundary is the same.

Requests that arrive meanwhile are admitted at the next step boundary, as ``schedule`` would
admit them after that step's decodes; their chunks ride along with the run's step
(``admitted``). A request whose prompt that step finishes and that sorts after every running
request joins the run; otherwise the run ends after that step.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from replica_agent.engine.kv_manager import KVCacheManager, blocks_for
from replica_agent.engine.request import RequestStatus, Sequence
from replica_agent.engine.scheduler import Scheduler
from replica_agent.engine.step import ScheduledChunk

TokensAt = Callable[[str, int, int], list[int]]  # request id, first position, end position
RecordStep = Callable[[int, int, float, float], None]


class DecodeRun:
    """Steps ``1..limit`` decode one token for each running sequence; step ``done + 1`` is in flight.

    Step ``s`` computes position ``start + s - 1`` of each sequence (where ``start + done`` is its
    computed-token count at step ``done``'s end; for the sequences there from the beginning,
    ``start`` is that count when the run began) and samples the token at position ``start + s``;
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
        self.seqs: list[Sequence] = []  # every sequence the run has had, by index
        self._live: dict[int, None] = {}  # indices of those not finished, in running order
        self.limit = limit
        self.done = 0
        self.batch_size = 0  # sequences in the step in flight
        # Chunks of the requests admitted into the step in flight, after its decodes.
        self.admitted: tuple[ScheduledChunk, ...] = ()
        self._admitted_tokens = (0, 0)  # their (prefill, decode) tokens
        self.aborted = False  # a request was aborted: the run ends after the step in flight
        self._scheduler = scheduler
        self._kv = kv
        self._tokens_at = tokens_at
        self._record = record
        self._starts: list[int] = []
        self._finish_at: list[int] = []  # the step that finishes each sequence
        self._start_context = 0  # of the sequences in the step in flight
        self._finishing: dict[int, list[int]] = {}  # step -> sequences it finishes, running order
        self._ends: list[tuple[float, float, int, int]] = []  # (time, duration, prefill, decode tokens)
        self._scheduled = 0  # steps whose slots are in the engine
        self._updated = 0  # steps whose results (but maybe not tokens) are in the engine
        self._tokens: list[int] = []  # steps whose token each sequence holds
        # The block pool sees slot allocations (step s, key 2s) and prefix-cache registrations
        # (step s, key 2s + 1), in single-step order: by step, then running order. Each sequence
        # has its next one of each kind queued.
        self._pool_events: list[tuple[int, int]] = []
        for seq, finish in zip(scheduler.running, finish_steps, strict=True):
            self._join(seq, finish)
        scheduler.step += 1  # step 1 is in flight

    @property
    def going(self) -> bool:
        """Whether a step is in flight."""
        return self.done < self.limit and self.batch_size > 0

    def context_tokens(self) -> int:
        """Cached tokens under the batch of the step in flight (what the cost model times it by)."""
        return self._start_context + self.done * self.batch_size

    def finish_step(self, now: float, duration_s: float) -> list[Sequence]:
        """Step ``done + 1`` ended at ``now``: the sequences it finishes, with their tokens, for
        the engine to retire (in running order) before the next step starts. Its ``admitted``
        chunks are left for the engine to update."""
        prefill, decode = self._admitted_tokens
        self._ends.append((now, duration_s, prefill, self.batch_size + decode))
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
                del self._live[index]
        return seqs

    def take_admitted(self) -> tuple[ScheduledChunk, ...]:
        """The chunks admitted into the step that just ended (for the engine to update)."""
        chunks, self.admitted, self._admitted_tokens = self.admitted, (), (0, 0)
        return chunks

    def sampled(self, chunks: tuple[ScheduledChunk, ...]) -> dict[str, int]:
        """The token each sampling chunk's step yields (what the executor samples)."""
        return {c.request_id: self._tokens_at(c.request_id, c.end, c.end + 1)[0] for c in chunks if c.samples}

    def admit(self, chunks: list[ScheduledChunk]) -> None:
        """The step just started also computes ``chunks`` (requests admitted after its decodes);
        the run ends after it unless :meth:`extend` says otherwise."""
        self.admitted = tuple(chunks)
        prefill = sum(len(c.token_ids) for c in chunks if c.is_prefill)
        self._admitted_tokens = (prefill, sum(len(c.token_ids) for c in chunks) - prefill)
        self.limit = self.done + 1

    def extend(self, joining: list[Sequence], steps_left: list[int], free_blocks: int) -> bool:
        """After a step that admitted requests, with no step in flight: go on as far as the free
        blocks allow, ``joining`` (the last running requests, decoding now, each finished by its
        ``steps_left``-th step from now) from the next step. False, changing nothing, when the
        run cannot go on."""
        if self.aborted:
            return False
        live = [self.seqs[index] for index in self._live]
        left = [self._finish_at[index] - self.done for index in self._live]
        limit = fitting_steps(live + joining, left + steps_left, free_blocks, self._kv.block_size)
        if limit < 1:
            return False
        for seq, steps in zip(joining, steps_left, strict=True):
            self._join(seq, self.done + steps)
        self.limit = self.done + limit
        return True

    def begin_step(self) -> None:
        """The next step is in flight (call while ``going``)."""
        self._scheduler.step += 1

    def truncate(self) -> None:
        """End the run after the step in flight (a request is being aborted)."""
        self.limit = self.done + 1
        self.aborted = True

    def sync(self, tokens: bool = True) -> None:
        """Apply every finished step, and the slots of the one in flight. Without ``tokens`` the
        sampled tokens may lag (nothing that reads them may run before the next full sync)."""
        self._apply(self.done, self.done + 1 if self.going else self.done, tokens)

    def close(self, tokens: bool = True) -> None:
        """Apply every finished step (nothing of the next is in the engine yet); without
        ``tokens``, as in :meth:`sync`."""
        self._apply(self.done, self.done, tokens)

    def _join(self, seq: Sequence, finish: int) -> None:
        """``seq`` (computed up to its last token at step ``done``'s end, holding that step's
        token) decodes from step ``done + 1`` until step ``finish`` finishes it."""
        index = len(self.seqs)
        start = seq.num_computed_tokens - self.done
        self.seqs.append(seq)
        self._live[index] = None
        self._starts.append(start)
        self._finish_at.append(finish)
        self._tokens.append(self.done)
        self._finishing.setdefault(finish, []).append(index)
        self.batch_size += 1
        self._start_context += start
        block_size = self._kv.block_size
        heapq.heappush(self._pool_events, (2 * (len(seq.block_ids) * block_size - start + 1), index))
        if self._kv.enable_prefix_caching:
            step = max(self.done + 1, (seq.num_registered_blocks + 1) * block_size - start)
            heapq.heappush(self._pool_events, (2 * step + 1, index))

    def _apply(self, updated: int, scheduled: int, tokens: bool) -> None:
        if updated > self._updated or scheduled > self._scheduled:
            self._apply_pool(updated, scheduled)
            if scheduled > self._scheduled:
                seqs, starts = self.seqs, self._starts
                for index in self._live:
                    seq = seqs[index]
                    if seq.status is RequestStatus.RUNNING:  # not aborted
                        seq.num_computed_tokens = starts[index] + scheduled
                self._scheduled = scheduled
            for now, duration_s, prefill, decode in self._ends[self._updated : updated]:
                self._record(prefill, decode, now, duration_s)
            self._updated = max(updated, self._updated)
        if tokens:
            for index in self._live:
                if self._tokens[index] < self._updated and self.seqs[index].status is RequestStatus.RUNNING:
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
                if not kv.allocate_block(seq):  # its blocks are full: the heap's key says so
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
    """How many steps a decode run may cover from now (0: the next step is not a plain decode step
    of every running request), and the step that finishes each running request; waiting requests
    are the caller's to check.

    The run's slot allocations must fit in the free blocks (no preemption), counting none of the
    blocks its finished requests free; and no sampled token may stop a request (only lengths do).
    """
    running = scheduler.running
    if scheduler.static or not running or len(running) > scheduler.config.max_num_batched_tokens:
        return 0, []
    finish_steps: list[int] = []
    for seq in running:
        steps = decode_steps_left(seq, max_seq_tokens, eos)
        if steps is None:
            return 0, []
        finish_steps.append(steps)
    return fitting_steps(running, finish_steps, kv.pool.num_free, kv.block_size), finish_steps


def decode_steps_left(seq: Sequence, max_seq_tokens: int, eos: int | None) -> int | None:
    """The decode step (from now) whose token finishes ``seq`` by length, or None when ``seq`` is
    not decoding (only its last token uncomputed) or a sampled token could stop it."""
    outputs = len(seq.output_token_ids)
    total = seq.num_prompt_tokens + outputs
    if not outputs or seq.num_computed_tokens != total - 1:
        return None
    params = seq.spec.params
    if not params.ignore_eos and (eos is not None or params.stop_token_ids):
        return None
    # step s samples output number outputs + s, which finishes the request at max_tokens or at
    # max_seq_tokens tokens
    return min(params.max_tokens - outputs, max_seq_tokens - total)


def fitting_steps(seqs: list[Sequence], finish_steps: list[int], free: int, block_size: int) -> int:
    """How many decode steps of ``seqs`` (each until its finish step) fit in ``free`` blocks."""
    if not seqs:
        return 0
    limit = max(finish_steps)
    if len(seqs) * (limit // block_size + 1) <= free:
        return limit  # enough whatever the sequences' offsets in their last blocks
    if _blocks_for_steps(seqs, finish_steps, limit, block_size) <= free:
        return limit
    low, high = 0, limit  # low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if _blocks_for_steps(seqs, finish_steps, middle, block_size) <= free:
            low = middle
        else:
            high = middle
    return low


def _blocks_for_steps(seqs: list[Sequence], finish_steps: list[int], steps: int, block_size: int) -> int:
    needed = 0
    for seq, finish in zip(seqs, finish_steps, strict=True):
        last = seq.num_computed_tokens + min(steps, finish)
        needed += max(0, blocks_for(last, block_size) - len(seq.block_ids))
    return needed
