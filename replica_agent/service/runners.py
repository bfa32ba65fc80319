"""How the real-time loop awaits one engine step on each kind of executor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from replica_agent.engine.step import StepPlan, StepResult
from replica_agent.executors.base import Executor


class StepRunner(Protocol):
    async def run(self, plan: StepPlan) -> StepResult: ...

    def release(self, request_id: str) -> None: ...

    def close(self) -> None: ...


class RealtimeRunner:
    """A modelled GPU in real time: computes the step's result, then sleeps the modelled duration
    (less the time the computation itself took), so tokens arrive when the real GPU would send them."""

    def __init__(
        self, executor: Executor, speedup: float = 1.0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        self.executor = executor
        self.speedup = speedup
        self._clock = clock

    async def run(self, plan: StepPlan) -> StepResult:
        started = self._clock()
        result = self.executor.execute(plan)
        remaining = result.duration_s / self.speedup - (self._clock() - started)
        await asyncio.sleep(max(0.0, remaining))
        return result

    def release(self, request_id: str) -> None:
        self.executor.release(request_id)

    def close(self) -> None:
        """Nothing to close."""


class InstantRunner:
    """Runs the executor and returns at once: the loop's own overhead, with no GPU time at all."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def run(self, plan: StepPlan) -> StepResult:
        result = self.executor.execute(plan)
        await asyncio.sleep(0)  # let consumers and the network run between steps
        return result

    def release(self, request_id: str) -> None:
        self.executor.release(request_id)

    def close(self) -> None:
        """Nothing to close."""


class ThreadRunner:
    """A compute-bound executor (torch) on one worker thread, so the event loop keeps serving."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="executor")

    async def run(self, plan: StepPlan) -> StepResult:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.executor.execute, plan)

    def release(self, request_id: str) -> None:
        self.executor.release(request_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
