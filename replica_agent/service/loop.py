"""The real-time driver around the pure engine: schedule → await the executor → update → deliver.

The loop never waits on a consumer. Each request's new tokens go into its own buffer; a consumer
that falls more than ``max_buffered_tokens`` behind is aborted (its blocks freed at once) rather than
allowed to hold memory, and a consumer that goes away aborts its request through ``abort``.
Snapshots go to a :class:`SnapshotHub` every ``snapshot_interval_s`` and right after any step that
admitted or finished a request, and after every abort — but never more often than once per
``min_publish_interval_s``: events closer together than that share one trailing snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from protos.snapshot import ReplicaSnapshot
from replica_agent.engine.engine import Engine
from replica_agent.engine.request import RequestSpec
from replica_agent.engine.step import RequestOutput, StepPlan, StepResult
from replica_agent.service.runners import StepRunner
from replica_agent.service.snapshot_hub import SnapshotHub

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """Tokens produced since the consumer last read; ``final`` is set once, on the last batch."""

    token_ids: tuple[int, ...]
    produced_at: float
    final: RequestOutput | None


class RequestStream:
    """One request's output as the loop delivers it; iterate with ``async for``."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._tokens: list[int] = []
        self._final: RequestOutput | None = None
        self._produced_at = 0.0
        self._ready = asyncio.Event()
        self._done = False

    @property
    def buffered(self) -> int:
        return len(self._tokens)

    @property
    def finished(self) -> bool:
        return self._final is not None

    def deliver(self, output: RequestOutput, produced_at: float) -> None:
        self._tokens.extend(output.new_token_ids)
        self._produced_at = produced_at
        if output.finished:
            self._final = output
        self._ready.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StreamBatch:
        if self._done:
            raise StopAsyncIteration
        await self._ready.wait()
        self._ready.clear()
        batch = StreamBatch(tuple(self._tokens), self._produced_at, self._final)
        self._tokens.clear()
        self._done = self._final is not None
        return batch


class EngineLoop:
    def __init__(
        self,
        engine: Engine,
        runner: StepRunner,
        *,
        snapshot_interval_s: float = 0.1,
        min_publish_interval_s: float = 0.005,
        max_buffered_tokens: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if snapshot_interval_s <= 0:
            raise ValueError(f"snapshot_interval_s must be positive, got {snapshot_interval_s}")
        self.engine = engine
        self.runner = runner
        self.snapshot_interval_s = snapshot_interval_s
        self.min_publish_interval_s = min(min_publish_interval_s, snapshot_interval_s)
        self._publish_pending = False
        self._publish_soon = asyncio.Event()
        self.max_buffered_tokens = max_buffered_tokens
        self._clock = clock
        self._wall_clock = wall_clock
        self._streams: dict[str, RequestStream] = {}
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_publish = clock()
        self.hub = SnapshotHub(self._snapshot())
        self.steps = 0

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("the engine loop is already running")
        self._tasks = [
            asyncio.create_task(self._drive(), name="engine-loop"),
            asyncio.create_task(self._tick(), name="snapshot-ticker"),
        ]

    async def drain(self, timeout_s: float) -> int:
        """Admit nothing more and let running requests finish for up to ``timeout_s``; abort the
        rest. Returns how many were aborted."""
        self.engine.draining = True
        self.publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, timeout_s))
        leftover = list(self._streams)
        for request_id in leftover:
            self.abort(request_id)
        return len(leftover)

    async def close(self) -> None:
        self._stopping = True
        self._work.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.runner.close()
        self.hub.close()

    def engine_clock(self) -> float:
        """The clock the engine runs on (monotonic seconds)."""
        return self._clock()

    # -- requests -----------------------------------------------------------------------------
    def submit(self, spec: RequestSpec) -> RequestStream:
        """Queue a request; the engine's ``ValueError`` (too long, duplicate id) propagates untouched."""
        if self.engine.draining:
            raise RuntimeError("the replica is draining and admits no new requests")
        self.engine.add(spec)
        stream = RequestStream(spec.request_id)
        self._streams[spec.request_id] = stream
        self._idle.clear()
        self._work.set()
        return stream

    def abort(self, request_id: str) -> bool:
        output = self.engine.abort(request_id)
        stream = self._streams.pop(request_id, None)
        if output is None:
            return False
        self.runner.release(request_id)
        if stream is not None:
            stream.deliver(output, self._wall_clock())
        self._after_finish()
        self.request_publish()
        return True

    # -- snapshots ----------------------------------------------------------------------------
    def _snapshot(self) -> ReplicaSnapshot:
        now = self._clock()
        self._last_publish = now
        return dataclasses.replace(self.engine.snapshot(now), time=self._wall_clock())

    def publish(self) -> None:
        self._publish_pending = False
        self.hub.publish(self._snapshot())

    def request_publish(self) -> None:
        """Publish now, or as soon as ``min_publish_interval_s`` has passed since the last one."""
        if self._clock() - self._last_publish >= self.min_publish_interval_s:
            self.publish()
            return
        self._publish_pending = True
        self._publish_soon.set()

    async def _tick(self) -> None:
        """Publish pending event snapshots when due, and a heartbeat every ``snapshot_interval_s``."""
        while not self._stopping:
            gap = self.min_publish_interval_s if self._publish_pending else self.snapshot_interval_s
            wait = self._last_publish + gap - self._clock()
            if wait <= 0:
                self.publish()
                continue
            self._publish_soon.clear()
            # asyncio.timeout, not wait_for: wait_for can swallow a cancellation that races the event.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._publish_soon.wait()

    # -- the loop -----------------------------------------------------------------------------
    async def _drive(self) -> None:
        while not self._stopping:
            plan = self.engine.schedule(self._clock())
            if plan is None:
                self._work.clear()
                await self._work.wait()
                continue
            result = await self._run_step(plan)
            outputs = self.engine.update(plan, result, self._clock())
            self.steps += 1
            admitted = bool(self.engine.scheduler.admitted_ids)
            finished = self._deliver(outputs)
            if admitted or finished:
                self.request_publish()

    async def _run_step(self, plan: StepPlan) -> StepResult:
        try:
            return await self.runner.run(plan)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A failed step fails its requests, never the loop: abort them and carry on.
            log.exception("executor failed on step %d; aborting its requests", plan.step_id)
            for chunk in plan.chunks:
                self.abort(chunk.request_id)
            return StepResult({}, 0.0)

    def _deliver(self, outputs: list[RequestOutput]) -> bool:
        now = self._wall_clock()
        finished = False
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if output.finished:
                finished = True
                self._streams.pop(output.request_id, None)
                self.runner.release(output.request_id)
            if stream is None:
                continue
            stream.deliver(output, now)
            if not output.finished and stream.buffered > self.max_buffered_tokens:
                log.warning("request %s: consumer too far behind, aborting", output.request_id)
                self.abort(output.request_id)
        if finished:
            self._after_finish()
        return finished

    def _after_finish(self) -> None:
        if not self._streams and not self.engine.has_unfinished():
            self._idle.set()
