"""The discrete-event fleet simulator (DESIGN.md section 8).

Real engines (cost-model executor) and the real router state and policies, in virtual time. A
request arrives at the router, which decides on its current view and records the ledger entry;
after the router→replica latency it is added to the engine, which steps whenever it has work (each
step lasts what the cost model says). Replicas publish snapshots every ``snapshot_interval_s``; the
router applies them ``snapshot_staleness_s`` later. Completion releases the ledger entry.

With the cost-model executor, stretches where a replica only decodes run as multi-step engine
runs (``SimConfig.multi_step``, see :mod:`replica_agent.engine.decode_run`): one light event per
step and the per-token work done in bulk when the replica is next observed, with results identical
to stepping one plan at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from protos.block_hash import BlockHasher
from replica_agent.engine.decode_run import DecodeRun
from replica_agent.engine.request import RequestSpec
from replica_agent.engine.step import RequestOutput, StepPlan, StepResult
from replica_agent.executors.cost_executor import CostModelExecutor
from router.policy.profile import Profile
from router.sim.events import (
    Admit,
    Arrival,
    Completion,
    DeliverSnapshot,
    Event,
    EventQueue,
    PublishSnapshot,
    RunStepDone,
    StepDone,
    Wake,
)
from router.sim.fleet import FleetMember
from router.sim.predict import FeaturePredictor, RequestPredictor
from router.sim.report import DroppedRequest, ReplicaStats, RequestRecord, SimResult
from router.sim.routing import RoutedRequest, SimRouter
from router.state.cluster import ClusterState


@dataclass(frozen=True, slots=True)
class SimConfig:
    router_latency_s: float = 0.001
    snapshot_interval_s: float = 0.1
    snapshot_staleness_s: float = 0.0
    client_max_tokens: int = 4096
    seed: int = 0
    # Run decode-only stretches as multi-step engine runs: same results, much faster.
    multi_step: bool = True

    def __post_init__(self) -> None:
        if self.router_latency_s < 0 or self.snapshot_staleness_s < 0:
            raise ValueError("router_latency_s and snapshot_staleness_s must be non-negative")
        if not self.snapshot_interval_s > 0:
            raise ValueError(f"snapshot_interval_s must be positive, got {self.snapshot_interval_s}")
        if self.client_max_tokens < 1:
            raise ValueError(f"client_max_tokens must be at least 1, got {self.client_max_tokens}")


@dataclass(eq=False, slots=True)
class _Node:
    member: FleetMember
    busy: bool = False
    wake_pending: bool = False
    served_tokens: int = 0
    kv_util_sum: float = 0.0
    kv_samples: int = 0
    busy_s: float = 0.0  # virtual seconds spent stepping, for the energy report
    run_step_s: float = 0.0  # duration of the engine's decode-run step in flight
    hashes_like_router: bool = False  # the engine hashes blocks as the router does

    def stats(self) -> ReplicaStats:
        engine = self.member.replica.engine
        return ReplicaStats(
            replica_id=engine.identity.replica_id,
            gpu=engine.identity.gpu,
            served_tokens=self.served_tokens,
            preemptions=engine.scheduler.num_preemptions,
            kv_util_mean=self.kv_util_sum / self.kv_samples if self.kv_samples else 0.0,
            busy_s=self.busy_s,
            busy_watts=self.member.replica.cost_model.power_watts(1.0),
            idle_watts=self.member.replica.cost_model.power_watts(0.0),
        )


class Simulator:
    """One run: build it with fresh replicas and a fresh policy, then call :meth:`run` once."""

    def __init__(
        self,
        fleet: Sequence[FleetMember],
        policy: Profile,
        config: SimConfig | None = None,
        predictor: RequestPredictor | None = None,
        on_request_done: Callable[[], None] | None = None,
    ) -> None:
        if not fleet:
            raise ValueError("a simulation needs at least one replica")
        self.config = config or SimConfig()
        self.nodes = [_Node(member) for member in fleet]
        self._index = {node.member.descriptor.replica_id: i for i, node in enumerate(self.nodes)}
        first = fleet[0].replica.engine
        hasher = BlockHasher(first.config.block_size, first.config.hash_seed)
        self.router = SimRouter(
            ClusterState(),
            policy,
            FeaturePredictor() if predictor is None else predictor,
            hasher,
            first.identity.model,
            self.config.client_max_tokens,
            self.config.seed,
        )
        for node in self.nodes:
            node.hashes_like_router = node.member.replica.engine.kv.hasher == hasher
        self.queue = EventQueue()
        self._on_done = on_request_done
        self._upcoming: Iterator[RequestSpec] = iter(())
        self._open: dict[int, RoutedRequest] = {}
        self._by_id: dict[str, int] = {}
        self._arrivals = 0
        self._more_arrivals = False
        self._records: list[RequestRecord] = []
        self._dropped: list[DroppedRequest] = []

    def run(self, specs: Iterable[RequestSpec]) -> SimResult:
        """Simulate ``specs`` (in arrival order, consumed lazily) until every request is done."""
        started = time.perf_counter()
        self._upcoming = iter(specs)
        following = next(self._upcoming, None)
        if following is not None:
            start = following.arrival_time
            for i, node in enumerate(self.nodes):
                self.router.cluster.register(node.member.descriptor, start)
                self.queue.push(start, PublishSnapshot(i))
            self._push_arrival(following)
        while self.queue:
            now, event = self.queue.pop()
            self._handle(now, event)
        self._drop_stalled()
        return SimResult(
            policy=self.router.policy.name,
            requests=self._arrivals,
            records=tuple(self._records),
            dropped=tuple(self._dropped),
            replicas=tuple(node.stats() for node in self.nodes),
            sim_wall_s=time.perf_counter() - started,
        )

    # -- events -----------------------------------------------------------------------------
    def _handle(self, now: float, event: Event) -> None:
        match event:
            case RunStepDone(replica):  # the most frequent events first
                self._on_run_step_done(replica, now)
            case StepDone(replica, plan, result):
                self._on_step_done(replica, plan, result, now)
            case Arrival(index):
                self._on_arrival(index, now)
            case Admit(index, replica):
                self._on_admit(index, replica, now)
            case Wake(replica):
                self.nodes[replica].wake_pending = False
                self._start_step(replica, now)
            case PublishSnapshot(replica):
                self._publish(replica, now)
            case DeliverSnapshot(snapshot):
                self.router.cluster.apply_snapshot(snapshot, now)
            case Completion(index):
                self._on_completion(index)

    def _push_arrival(self, spec: RequestSpec) -> None:
        index = self._arrivals
        self._arrivals += 1
        if spec.request_id in self._by_id:
            raise ValueError(f"request id {spec.request_id!r} arrived twice")
        self._open[index] = self.router.shape(spec, spec.arrival_time)
        self._by_id[spec.request_id] = index
        self.queue.push(spec.arrival_time, Arrival(index))
        self._more_arrivals = True

    def _on_arrival(self, index: int, now: float) -> None:
        following = next(self._upcoming, None)
        if following is None:
            self._more_arrivals = False
        elif following.arrival_time < now:
            raise ValueError(f"arrivals out of order at {following.request_id!r}")
        else:
            self._push_arrival(following)
        request = self._open[index]
        decision = self.router.route(request, now)
        if decision.replica_id is None:
            self._drop(index, f"no replica: {decision.reason}")
            return
        replica = self._index[decision.replica_id]
        self.queue.push(now + self.config.router_latency_s, Admit(index, replica))

    def _on_admit(self, index: int, replica: int, now: float) -> None:
        node = self.nodes[replica]
        request = self._open[index]
        spec = request.spec
        # The router hashed the prompt already (without extra keys): the engine takes its hashes.
        shared = node.hashes_like_router and not spec.extra_keys
        try:
            node.member.replica.engine.add(spec, request.routing.block_hashes if shared else None)
        except ValueError as error:
            self._drop(index, f"refused by {node.member.descriptor.replica_id}: {error}")
            return
        if not node.busy and not node.wake_pending:
            node.wake_pending = True
            self.queue.push(now, Wake(replica))

    def _start_step(self, replica: int, now: float) -> None:
        node = self.nodes[replica]
        if node.busy:
            return
        replica_parts = node.member.replica
        executor = replica_parts.executor
        if self.config.multi_step and type(executor) is CostModelExecutor:
            # The cost-model executor's tokens are known in advance: steps that only decode run
            # as one engine-side run, one cheap event per step, with the same times and state.
            run = replica_parts.engine.start_decode_run(executor.tokens_at)
            if run is not None:
                node.busy = True
                self._start_run_step(replica, node, executor, run, now)
                return
        plan = replica_parts.engine.schedule(now)
        if plan is None:
            return
        node.busy = True
        result = executor.execute(plan)
        node.busy_s += result.duration_s
        self.queue.push(now + result.duration_s, StepDone(replica, plan, result))

    def _start_run_step(
        self, replica: int, node: _Node, executor: CostModelExecutor, run: DecodeRun, now: float
    ) -> None:
        duration = executor.cost_model.decode_batch_seconds(
            run.batch_size, run.context_tokens(), run.admitted
        )
        node.run_step_s = duration
        node.busy_s += duration
        self.queue.push(now + duration, RunStepDone(replica))

    def _on_run_step_done(self, replica: int, now: float) -> None:
        node = self.nodes[replica]
        replica_parts = node.member.replica
        engine = replica_parts.engine
        node.busy = False
        self._deliver(replica, engine.finish_decode_step(now, node.run_step_s), now)
        run = engine.decode_run
        if run is None:
            self._start_step(replica, now)
            return
        executor = replica_parts.executor
        if not isinstance(executor, CostModelExecutor):
            raise TypeError("a decode run needs the cost-model executor")
        node.busy = True
        self._start_run_step(replica, node, executor, run, now)

    def _on_step_done(self, replica: int, plan: StepPlan, result: StepResult, now: float) -> None:
        node = self.nodes[replica]
        node.busy = False
        self._deliver(replica, node.member.replica.engine.update(plan, result, now, notable_only=True), now)
        self._start_step(replica, now)

    def _deliver(self, replica: int, outputs: list[RequestOutput], now: float) -> None:
        """First tokens and finished requests (a step's notable outputs) reach the router."""
        overhead = self.nodes[replica].member.replica.cost_model.request_overhead_s
        by_id, open_requests = self._by_id, self._open
        for output in outputs:
            index = by_id[output.request_id]
            request = open_requests[index]
            if request.first_token_s is None:
                request.first_token_s = now
                self.router.first_token(request, now - request.spec.arrival_time + overhead)
            if output.finished:
                self._finish(index, replica, output, now)

    def _finish(self, index: int, replica: int, output: RequestOutput, now: float) -> None:
        node = self.nodes[replica]
        request = self._open[index]
        overhead = node.member.replica.cost_model.request_overhead_s
        arrival = request.spec.arrival_time
        first_token = now if request.first_token_s is None else request.first_token_s
        request.output_tokens = output.num_output_tokens
        self._records.append(
            RequestRecord(
                request_id=output.request_id,
                arrival_s=arrival,
                replica_id=node.member.descriptor.replica_id,
                ttft_s=first_token - arrival + overhead,
                e2e_s=now - arrival + overhead,
                prompt_tokens=output.num_prompt_tokens,
                cached_tokens=output.num_cached_tokens,
                output_tokens=output.num_output_tokens,
                preemptions=output.num_preemptions,
                finish_reason=output.finish_reason or "",
            )
        )
        node.served_tokens += output.num_prompt_tokens + output.num_output_tokens
        node.member.replica.executor.release(output.request_id)
        self.queue.push(now, Completion(index, replica))

    def _on_completion(self, index: int) -> None:
        request = self._open.pop(index)
        del self._by_id[request.spec.request_id]
        self.router.complete(request, request.output_tokens)
        if self._on_done is not None:
            self._on_done()

    def _publish(self, replica: int, now: float) -> None:
        node = self.nodes[replica]
        snapshot = node.member.replica.engine.snapshot(now)
        node.kv_util_sum += snapshot.cache_fill
        node.kv_samples += 1
        self.queue.push(now + self.config.snapshot_staleness_s, DeliverSnapshot(snapshot))
        if self._open or self._more_arrivals:
            self.queue.push(now + self.config.snapshot_interval_s, PublishSnapshot(replica))

    # -- losses -----------------------------------------------------------------------------
    def _drop(self, index: int, reason: str) -> None:
        request = self._open.pop(index)
        del self._by_id[request.spec.request_id]
        self.router.complete(request, None)
        self._dropped.append(DroppedRequest(request.spec.request_id, request.spec.arrival_time, reason))
        if self._on_done is not None:
            self._on_done()

    def _drop_stalled(self) -> None:
        """Requests left when no event remains (an engine that never scheduled them)."""
        for index in sorted(self._open):
            self._drop(index, "stalled: the engine never finished it")
