"""A bounded memo of cost-model evaluations, which would otherwise take most of a decision's time.

Evaluating a replica's GPU cost model takes about a microsecond; a replica's running batch changes
only when its next snapshot arrives, while the router decides many times in between, so nearly every
lookup hits. Entries are keyed by the cost model's identity and the batch shape; the model object is
kept in the entry and compared on lookup, so a recycled ``id`` can never return another model's
number. The whole-candidate-list lookups also remember their answer per :class:`ReplicaLoad` object
(kept in the entry and compared the same way): a load is immutable and a view rebuilds only the
loads that changed, so most candidates cost one dictionary lookup. The cache only remembers what the
pure cost model would return; it changes no decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from replica_agent.executors.cost_model import StepCostModel
from router.policy.view import ReplicaLoad

MAX_ENTRIES = 8192

_Key = tuple[int, int, int]
KeyT = TypeVar("KeyT")
EntryT = TypeVar("EntryT")


@dataclass(eq=False, slots=True)
class SpeedCache:
    """``prefill_tokens_per_s`` and ``decode_step_s`` of a replica's :class:`ReplicaSpeed` given its
    running sequences, memoised."""

    _prefill: dict[_Key, tuple[StepCostModel, float]] = field(default_factory=dict, init=False, repr=False)
    _decode: dict[tuple[int, int, int, int], tuple[StepCostModel, float]] = field(
        default_factory=dict, init=False, repr=False
    )
    _by_load: dict[int, tuple[ReplicaLoad, float]] = field(default_factory=dict, init=False, repr=False)
    _speeds_by_load: dict[int, tuple[ReplicaLoad, tuple[float, float, float]]] = field(
        default_factory=dict, init=False, repr=False
    )

    def prefill_tokens_per_s(self, replica: ReplicaLoad) -> float:
        speed = replica.speed
        model = speed.cost_model
        running, context = replica.num_running, replica.running_context_tokens
        if model is None:
            return speed.prefill_tokens_per_s(running, context / running if running > 0 else 0.0)
        key = (id(model), running, context)
        entry = self._prefill.get(key)
        if entry is None or entry[0] is not model:
            rate = model.prefill_tokens_per_s(running, context / running if running > 0 else 0.0)
            entry = _remember(self._prefill, key, (model, rate))
        return entry[1] * speed.correction

    def prefill_rates(self, replicas: Sequence[ReplicaLoad]) -> list[float]:
        """``prefill_tokens_per_s`` of each replica, in order (one call for a whole candidate list).

        Remembered per :class:`ReplicaLoad` object too: a view rebuilds only the loads that changed,
        so nearly every candidate is the very object of the previous decision. The entry holds the
        load, so its ``id`` cannot be reused while the entry lives, and is checked on lookup.
        """
        by_load, rates = self._by_load, []
        for replica in replicas:
            entry = by_load.get(id(replica))
            if entry is None or entry[0] is not replica:
                entry = _remember(by_load, id(replica), (replica, self.prefill_tokens_per_s(replica)))
            rates.append(entry[1])
        return rates

    def replica_speeds(self, replicas: Sequence[ReplicaLoad]) -> list[tuple[float, float, float]]:
        """Per replica, in order: its prefill rate, the decode step with one more sequence in its
        batch (running + waiting + unacknowledged) and how much that step exceeds the current one.
        Remembered per :class:`ReplicaLoad` object, as in :meth:`prefill_rates`."""
        by_load, speeds = self._speeds_by_load, []
        for replica in replicas:
            entry = by_load.get(id(replica))
            if entry is None or entry[0] is not replica:
                batch = replica.batch_size
                step_with_s = self.decode_step_s(replica, batch + 1)
                marginal_s = step_with_s - self.decode_step_s(replica, batch)
                rate = self.prefill_tokens_per_s(replica)
                entry = _remember(by_load, id(replica), (replica, (rate, step_with_s, marginal_s)))
            speeds.append(entry[1])
        return speeds

    def decode_step_s(self, replica: ReplicaLoad, batch: int) -> float:
        """One decode step of ``batch`` sequences at the replica's mean running context."""
        speed = replica.speed
        model = speed.cost_model
        running, context = replica.num_running, replica.running_context_tokens
        if model is None or batch <= 0:
            return speed.decode_step_s(batch, context / running if running > 0 else 0.0)
        key = (id(model), batch, running, context)
        entry = self._decode.get(key)
        if entry is None or entry[0] is not model:
            seconds = model.decode_step_seconds(batch, context / running if running > 0 else 0.0)
            entry = _remember(self._decode, key, (model, seconds))
        return entry[1] / speed.correction


def _remember(entries: dict[KeyT, EntryT], key: KeyT, entry: EntryT) -> EntryT:
    if len(entries) >= MAX_ENTRIES:
        entries.clear()
    entries[key] = entry
    return entry
