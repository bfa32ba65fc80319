"""The simulator's events and the time-ordered queue that holds them.

Events at the same instant run in the order they were pushed (the sequence number breaks ties), so
a run is deterministic and, e.g., every request admitted at one instant joins the same engine step.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from protos.snapshot import ReplicaSnapshot
from replica_agent.engine.step import StepPlan, StepResult


@dataclass(frozen=True, slots=True)
class Arrival:
    """The request reaches the router, which picks a replica at once."""

    index: int


@dataclass(frozen=True, slots=True)
class Admit:
    """The routed request reaches its replica (after the router→replica latency)."""

    index: int
    replica: int


@dataclass(frozen=True, slots=True)
class Wake:
    """An idle replica looks for work (pushed when something is admitted to it)."""

    replica: int


@dataclass(frozen=True, slots=True)
class StepDone:
    replica: int
    plan: StepPlan
    result: StepResult


@dataclass(frozen=True, slots=True)
class RunStepDone:
    """A step of the replica's multi-step decode run ends (see :class:`DecodeRun`)."""

    replica: int


@dataclass(frozen=True, slots=True)
class PublishSnapshot:
    replica: int


@dataclass(frozen=True, slots=True)
class DeliverSnapshot:
    """A published snapshot reaches the router (after the staleness delay)."""

    snapshot: ReplicaSnapshot


@dataclass(frozen=True, slots=True)
class Completion:
    """The request's last token is out: the router releases it from its ledger."""

    index: int
    replica: int


Event = Arrival | Admit | Wake | StepDone | RunStepDone | PublishSnapshot | DeliverSnapshot | Completion


class EventQueue:
    def __init__(self) -> None:
        # (time, push sequence number, event): the unique sequence number settles every tie, so
        # events themselves are never compared.
        self._heap: list[tuple[float, int, Event]] = []
        self._pushed = 0

    def push(self, time: float, event: Event) -> None:
        heapq.heappush(self._heap, (time, self._pushed, event))
        self._pushed += 1

    def pop(self) -> tuple[float, Event]:
        time, _, event = heapq.heappop(self._heap)
        return time, event

    def __len__(self) -> int:
        return len(self._heap)
