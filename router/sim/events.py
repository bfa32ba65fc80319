"""The simulator's events and the time-ordered queue that holds them.

Events at the same instant run in the order they were pushed (the sequence number breaks ties), so
a run is deterministic and, e.g., every request admitted at one instant joins the same engine step.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

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


Event = Arrival | Admit | Wake | StepDone | PublishSnapshot | DeliverSnapshot | Completion


@dataclass(order=True, slots=True)
class _Entry:
    time: float
    seq: int
    event: Event = field(compare=False)


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._pushed = 0

    def push(self, time: float, event: Event) -> None:
        heapq.heappush(self._heap, _Entry(time, self._pushed, event))
        self._pushed += 1

    def pop(self) -> tuple[float, Event]:
        entry = heapq.heappop(self._heap)
        return entry.time, entry.event

    def __len__(self) -> int:
        return len(self._heap)
