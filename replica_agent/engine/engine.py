"""The engine contract (DESIGN.md section 4.5): add, abort, schedule, update, snapshot.

Pure and synchronous: time comes in as ``now``; drivers (the real-time loop, the simulator, the
benchmarks) call ``schedule`` then hand the plan to an executor and its result to ``update``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from protos.block_hash import BlockHasher
from protos.snapshot import ReplicaSnapshot, Tier
from replica_agent.engine.block_pool import BlockPool
from replica_agent.engine.config import EngineConfig
from replica_agent.engine.decode_run import DecodeRun, TokensAt, decode_steps_left, plan_decode_run
from replica_agent.engine.kv_manager import KVCacheManager, blocks_for
from replica_agent.engine.queues import make_queue_policy
from replica_agent.engine.request import RequestSpec, RequestStatus, Sequence
from replica_agent.engine.scheduler import Scheduler
from replica_agent.engine.step import RequestOutput, ScheduledChunk, StepPlan, StepResult


@dataclass(frozen=True, slots=True)
class ReplicaIdentity:
    replica_id: str = "replica-0"
    model: str = "unknown"
    gpu: str = "unknown"
    tier: Tier = Tier.CLOUD


@dataclass(frozen=True, slots=True)
class _StepRecord:
    time: float
    prefill_tokens: int
    decode_tokens: int


class Engine:
    def __init__(self, config: EngineConfig, identity: ReplicaIdentity | None = None) -> None:
        self.config = config
        self.identity = identity or ReplicaIdentity()
        self.pool = BlockPool(config.num_blocks, record_cache_events=config.record_cache_events)
        hasher = BlockHasher(config.block_size, config.hash_seed)
        self.kv = KVCacheManager(self.pool, hasher, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.kv, make_queue_policy(config))
        self.max_seq_tokens = min(config.max_model_len, config.num_blocks * config.block_size)
        self._requests: dict[str, Sequence] = {}
        self._arrivals = 0
        self._in_flight: StepPlan | None = None
        self._history: deque[_StepRecord] = deque()
        self._prefill_total = 0  # tokens in _history, kept in step with it
        self._decode_total = 0
        self._snapshot_seq = 0
        self._started_at: float | None = None
        self._run: DecodeRun | None = None
        self.draining = False

    # -- requests ---------------------------------------------------------------------------
    def add(self, spec: RequestSpec, prompt_block_hashes: tuple[int, ...] | None = None) -> None:
        """Queue a request (a decode run in progress admits it at its next step boundary).

        ``prompt_block_hashes``, when given, must be the hashes of the prompt's full blocks under
        this engine's hasher (``kv.hasher``, with the spec's extra keys), e.g. the router's: the
        engine then does not hash the prompt again."""
        if spec.request_id in self._requests:
            raise ValueError(f"request id {spec.request_id!r} is already in the engine")
        prompt = len(spec.prompt_token_ids)
        if prompt >= self.config.max_model_len:
            raise ValueError(
                f"prompt of {prompt} tokens leaves no room to generate within max_model_len "
                f"{self.config.max_model_len}"
            )
        if blocks_for(prompt + 1, self.config.block_size) > self.config.num_blocks:
            raise ValueError(f"prompt of {prompt} tokens cannot fit in {self.config.num_blocks} KV blocks")
        seq = Sequence(spec=spec, arrival_order=self._arrivals)
        if prompt_block_hashes is not None:
            if len(prompt_block_hashes) != prompt // self.config.block_size:
                raise ValueError(
                    f"{len(prompt_block_hashes)} prompt block hashes for {prompt // self.config.block_size} "
                    "full blocks"
                )
            seq.block_hashes = list(prompt_block_hashes)
        self._arrivals += 1
        self._requests[spec.request_id] = seq
        self.scheduler.enqueue(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks at once; None if it is unknown or already finished."""
        self._end_run_after_step_in_flight()
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.remove(seq)
        seq.status = RequestStatus.FINISHED_ABORTED
        return self._output(seq, ())

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def get(self, request_id: str) -> Sequence | None:
        if self._run is not None:
            self._run.sync()
        return self._requests.get(request_id)

    # -- steps ------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan | None:
        if self._in_flight is not None or self._run is not None:
            raise RuntimeError("a step is already in flight: call update() with its result first")
        plan = self.scheduler.schedule()
        if plan is None:
            return None
        for chunk in plan.chunks:
            seq = self._requests[chunk.request_id]
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
        self._in_flight = plan
        return plan

    def update(
        self, plan: StepPlan, result: StepResult, now: float, notable_only: bool = False
    ) -> list[RequestOutput]:
        """Apply a finished step: one output per sampled token, or with ``notable_only`` only those
        that finish a request or are its first token (what a simulator acts on)."""
        if plan is not self._in_flight:
            raise RuntimeError(f"step {plan.step_id} is not the step in flight")
        self._in_flight = None
        outputs, prefill_tokens, decode_tokens = self._update_chunks(
            plan.chunks, result.sampled_token_ids, now, notable_only
        )
        self._record(prefill_tokens, decode_tokens, now, result.duration_s)
        return outputs

    def _update_chunks(
        self, chunks: tuple[ScheduledChunk, ...], sampled: Mapping[str, int], now: float, notable_only: bool
    ) -> tuple[list[RequestOutput], int, int]:
        """``update`` without the step's throughput record: the outputs and the step's prefill and
        decode tokens."""
        requests = self._requests
        caching = self.kv.enable_prefix_caching
        block_size = self.kv.block_size
        running = RequestStatus.RUNNING
        outputs: list[RequestOutput] = []
        prefill_tokens = decode_tokens = 0
        for chunk in chunks:
            if chunk.is_prefill:
                prefill_tokens += len(chunk.token_ids)
            else:
                decode_tokens += len(chunk.token_ids)
            seq = requests.get(chunk.request_id)
            if seq is None or seq.status is not running:
                continue  # aborted while the step ran
            if caching and seq.num_computed_tokens // block_size > seq.num_registered_blocks:
                self.kv.register_computed(seq)
            if not chunk.samples:
                continue
            token = sampled.get(chunk.request_id)
            if token is None:
                raise ValueError(f"executor returned no token for request {chunk.request_id!r}")
            tokens = seq.output_token_ids
            tokens.append(token)
            first = seq.first_token_time is None
            if first:
                seq.first_token_time = now
            status = self._stop_status(seq, token)
            if status is None:
                if notable_only and not first:
                    continue
                outputs.append(  # _output, inlined for the common case of a token that goes on
                    RequestOutput(
                        seq.request_id,
                        (token,),
                        False,
                        None,
                        seq.num_prompt_tokens,
                        seq.num_cached_prompt_tokens,
                        len(tokens),
                        seq.num_preemptions,
                    )
                )
            else:
                self._finish(seq, status, now)
                outputs.append(self._output(seq, (token,)))
        return outputs, prefill_tokens, decode_tokens

    # -- multi-step decode (for drivers that know the sampled tokens in advance) -------------------
    def start_decode_run(self, tokens_at: TokensAt) -> DecodeRun | None:
        """Instead of ``schedule``: start a run of decode steps whose sampled tokens are
        ``tokens_at(request_id, first, end)`` (what the executor samples at positions
        ``first..end - 1``), or None when the next step is not a plain decode step of every running
        request with nothing waiting.

        Step 1 is in flight at once; report each step's end with :meth:`finish_decode_step`.
        ``add``, ``abort``, ``snapshot`` and ``get`` see exactly the state single steps would have
        left; requests added meanwhile ride along with the next step (``DecodeRun.admitted``) and
        may join the run; ``abort`` ends it after the step in flight.
        """
        if self._in_flight is not None or self._run is not None:
            raise RuntimeError("a step is already in flight: call update() with its result first")
        if self.scheduler.waiting:
            return None
        limit, finish_steps = plan_decode_run(
            self.scheduler, self.kv, self.max_seq_tokens, self.config.eos_token_id
        )
        if limit < 1:
            return None
        self._run = DecodeRun(self.scheduler, self.kv, limit, finish_steps, tokens_at, self._record)
        return self._run

    @property
    def decode_run(self) -> DecodeRun | None:
        """The decode run in progress, if any."""
        return self._run

    def finish_decode_step(self, now: float, duration_s: float) -> list[RequestOutput]:
        """The run's step in flight ended at ``now`` after ``duration_s``: the outputs of the
        requests it finished and, for those admitted into it, their first tokens (the others' new
        tokens are not reported). Then the run's next step is in flight, with the chunks of the
        requests it admits in ``admitted``, or the run is over (``decode_run`` is None) and
        ``schedule`` is next."""
        run = self._run
        if run is None:
            raise RuntimeError("no decode run in progress")
        outputs: list[RequestOutput] = []
        for seq in run.finish_step(now, duration_s):
            token = seq.output_token_ids[-1]
            status = self._stop_status(seq, token)
            if status is None:
                raise RuntimeError(f"decode run expected {seq.request_id!r} to finish")
            self._finish(seq, status, now)
            outputs.append(self._output(seq, (token,)))
        admitted = run.take_admitted()
        if admitted:
            run.close(tokens=False)  # the decodes' results come first, as in ``update``
            outputs += self._update_chunks(admitted, run.sampled(admitted), now, notable_only=True)[0]
            self._continue_with(run, admitted)
        if run.going:
            run.begin_step()
            if self.scheduler.waiting:
                self._admit_into(run, now)
        else:
            run.close()
            self._run = None
        return outputs

    def _continue_with(self, run: DecodeRun, admitted: tuple[ScheduledChunk, ...]) -> None:
        """After a step that admitted requests: go on if they all decode now, after every request
        already in the run (their order in ``running``)."""
        running = self.scheduler.running
        joining = running[run.batch_size :]
        if len(running) > self.config.max_num_batched_tokens:
            return
        if {seq.request_id for seq in joining} - {chunk.request_id for chunk in admitted}:
            return  # a request admitted earlier sorted among them
        steps_left: list[int] = []
        for seq in joining:
            steps = decode_steps_left(seq, self.max_seq_tokens, self.config.eos_token_id)
            if steps is None:
                return
            steps_left.append(steps)
        run.extend(joining, steps_left, self.pool.num_free)

    def _admit_into(self, run: DecodeRun, now: float) -> None:
        """Admit waiting requests into the step just started, after its decodes."""
        # what the admission reads, as ``schedule`` would see it
        run.sync(tokens=self.scheduler.policy.running_key_reads_outputs)
        chunks = self.scheduler.admit_after_decodes(run.batch_size)
        for chunk in chunks:
            seq = self._requests[chunk.request_id]
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
        run.admit(chunks)

    def _end_run_after_step_in_flight(self) -> None:
        if self._run is not None:
            self._run.sync()
            self._run.truncate()

    def _finish(self, seq: Sequence, status: RequestStatus, now: float) -> None:
        self.scheduler.remove(seq)
        del self._requests[seq.request_id]
        seq.status = status
        seq.finish_time = now

    def _stop_status(self, seq: Sequence, token: int) -> RequestStatus | None:
        params = seq.spec.params
        if not params.ignore_eos and (token == self.config.eos_token_id or token in params.stop_token_ids):
            return RequestStatus.FINISHED_STOPPED
        num_outputs = len(seq.output_token_ids)
        if num_outputs >= params.max_tokens or seq.num_prompt_tokens + num_outputs >= self.max_seq_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    @staticmethod
    def _output(seq: Sequence, new_tokens: tuple[int, ...]) -> RequestOutput:
        finished = seq.status.finished
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=new_tokens,
            finished=finished,
            finish_reason=seq.status.value if finished else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            num_preemptions=seq.num_preemptions,
        )

    # -- observation ------------------------------------------------------------------------
    def _record(self, prefill_tokens: int, decode_tokens: int, now: float, duration_s: float) -> None:
        if self._started_at is None:
            self._started_at = now - duration_s
        self._history.append(_StepRecord(now, prefill_tokens, decode_tokens))
        self._prefill_total += prefill_tokens
        self._decode_total += decode_tokens
        self._forget_steps_before(now - self.config.throughput_window_s)

    def _forget_steps_before(self, horizon: float) -> None:
        history = self._history
        while history and history[0].time < horizon:
            oldest = history.popleft()
            self._prefill_total -= oldest.prefill_tokens
            self._decode_total -= oldest.decode_tokens

    def snapshot(self, now: float) -> ReplicaSnapshot:
        """Load as routers see it; drains the admitted ids and cache events since the last call."""
        if self._run is not None:
            self._run.sync(tokens=False)  # a snapshot reads no sampled token
        # Steps before the window are forgotten for good: an idle engine's would otherwise be
        # walked past at every snapshot.
        self._forget_steps_before(now - self.config.throughput_window_s)
        prefill, decode = self._prefill_total, self._decode_total
        started = now if self._started_at is None else self._started_at
        span = min(self.config.throughput_window_s, now - started)
        prefill_rate = prefill / span if span > 0 else 0.0
        decode_rate = decode / span if span > 0 else 0.0
        running, waiting = self.scheduler.running, self.scheduler.waiting
        cached, evicted = self.pool.drain_cache_events()
        admitted = tuple(self.scheduler.admitted_ids)
        self.scheduler.admitted_ids.clear()
        self._snapshot_seq += 1
        return ReplicaSnapshot(
            replica_id=self.identity.replica_id,
            model=self.identity.model,
            gpu=self.identity.gpu,
            tier=self.identity.tier,
            seq=self._snapshot_seq,
            time=now,
            total_blocks=self.pool.num_blocks,
            free_blocks=self.pool.num_free,
            cached_blocks=self.pool.num_cached,
            block_size=self.config.block_size,
            num_running=len(running),
            num_waiting=len(waiting),
            waiting_prefill_tokens=sum(s.num_tokens - s.num_computed_tokens for s in waiting)
            + sum(
                [
                    s.num_prompt_tokens - s.num_computed_tokens
                    for s in running
                    if s.num_computed_tokens < s.num_prompt_tokens
                ]
            ),
            running_context_tokens=sum([s.num_computed_tokens for s in running]),
            preemptions_total=self.scheduler.num_preemptions,
            prefill_tokens_per_s=prefill_rate,
            decode_tokens_per_s=decode_rate,
            admitted_ids=admitted,
            draining=self.draining,
            new_cached_hashes=cached,
            evicted_hashes=evicted,
        )
