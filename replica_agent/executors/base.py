"""The executor contract the engine drivers (real-time loop, simulator, benchmarks) rely on."""

from __future__ import annotations

from typing import Protocol

from replica_agent.engine.step import StepPlan, StepResult


class Executor(Protocol):
    def execute(self, plan: StepPlan) -> StepResult:
        """Compute one step: sample a token for every chunk whose ``samples`` flag is set."""
        ...

    def release(self, request_id: str) -> None:
        """Forget per-request state (a finished, aborted or preempted request)."""
        ...
