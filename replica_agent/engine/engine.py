"""The engine contract (DESIGN.md section 4.5): add, abort, schedule, update, snapshot.

Pure and synchronous: time comes in as ``now``; drivers (the real-time loop, the simulator, the
benchmarks) call ``schedule`` then hand the plan to an executor and its result to ``update``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from protos.block_hash import BlockHasher
from protos.snapshot import ReplicaSnapshot, Tier
from replica_agent.engine.block_pool import BlockPool
from replica_agent.engine.config import EngineConfig
from replica_agent.engine.kv_manager import KVCacheManager, blocks_for
from replica_agent.engine.queues import make_queue_policy
from replica_agent.engine.request import RequestSpec, RequestStatus, Sequence
from replica_agent.engine.scheduler import Scheduler
from replica_agent.engine.step import RequestOutput, StepPlan, StepResult


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
        self._snapshot_seq = 0
        self._started_at: float | None = None
        self.draining = False

    # -- requests ---------------------------------------------------------------------------
    def add(self, spec: RequestSpec) -> None:
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
        self._arrivals += 1
        self._requests[spec.request_id] = seq
        self.scheduler.enqueue(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks at once; None if it is unknown or already finished."""
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
        return self._requests.get(request_id)

    # -- steps ------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan | None:
        if self._in_flight is not None:
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

    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[RequestOutput]:
        if plan is not self._in_flight:
            raise RuntimeError(f"step {plan.step_id} is not the step in flight")
        self._in_flight = None
        self._record(plan, result, now)
        outputs: list[RequestOutput] = []
        for chunk in plan.chunks:
            seq = self._requests.get(chunk.request_id)
            if seq is None or seq.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            self.kv.register_computed(seq)
            if not chunk.samples:
                continue
            token = result.sampled_token_ids.get(chunk.request_id)
            if token is None:
                raise ValueError(f"executor returned no token for request {chunk.request_id!r}")
            outputs.append(self._accept(seq, token, now))
        return outputs

    def _accept(self, seq: Sequence, token: int, now: float) -> RequestOutput:
        seq.output_token_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = now
        status = self._stop_status(seq, token)
        if status is not None:
            self.scheduler.remove(seq)
            del self._requests[seq.request_id]
            seq.status = status
            seq.finish_time = now
        return self._output(seq, (token,))

    def _stop_status(self, seq: Sequence, token: int) -> RequestStatus | None:
        params = seq.spec.params
        if not params.ignore_eos and (token == self.config.eos_token_id or token in params.stop_token_ids):
            return RequestStatus.FINISHED_STOPPED
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_seq_tokens:
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
        )

    # -- observation ------------------------------------------------------------------------
    def _record(self, plan: StepPlan, result: StepResult, now: float) -> None:
        if self._started_at is None:
            self._started_at = now - result.duration_s
        self._history.append(_StepRecord(now, plan.num_prefill_tokens, plan.num_decode_tokens))
        horizon = now - self.config.throughput_window_s
        while self._history and self._history[0].time < horizon:
            self._history.popleft()

    def snapshot(self, now: float) -> ReplicaSnapshot:
        """Load as routers see it; drains the admitted ids and cache events since the last call."""
        horizon = now - self.config.throughput_window_s
        recent = [r for r in self._history if r.time >= horizon]
        started = now if self._started_at is None else self._started_at
        span = min(self.config.throughput_window_s, now - started)
        prefill_rate = sum(r.prefill_tokens for r in recent) / span if span > 0 else 0.0
        decode_rate = sum(r.decode_tokens for r in recent) / span if span > 0 else 0.0
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
            + sum(s.remaining_prefill_tokens for s in running),
            running_context_tokens=sum(s.num_computed_tokens for s in running),
            preemptions_total=self.scheduler.num_preemptions,
            prefill_tokens_per_s=prefill_rate,
            decode_tokens_per_s=decode_rate,
            admitted_ids=admitted,
            draining=self.draining,
            new_cached_hashes=cached,
            evicted_hashes=evicted,
        )
