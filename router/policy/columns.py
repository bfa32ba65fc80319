"""A cluster view's per-replica numbers as numpy columns, so that a decision does its arithmetic a
column at a time instead of a replica at a time.

A view changes one or two replicas between decisions (a snapshot arrives, the ledger charges the
chosen replica) and keeps the other :class:`ReplicaLoad` objects as they were, so
:class:`ColumnCache` rebuilds only the rows whose load object changed. The speed columns (prefill
rate, decode steps) are computed on first use, again only for the changed rows. Everything here only
remembers what the loads and their pure cost models say; it changes no decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import is_not

import numpy as np
import numpy.typing as npt

from protos.routing import RoutingRequest
from router.policy.plugins.speed_cache import SpeedCache
from router.policy.view import ClusterView, ReplicaLoad, match_counts

Floats = npt.NDArray[np.float64]
Rows = npt.NDArray[np.intp]
Mask = npt.NDArray[np.bool_]

# Row numbers of FleetColumns.values, one per field.
BLOCK_SIZE, FREE, PENDING_BLOCKS, TOTAL, ROOM = 0, 1, 2, 3, 4
RUNNING, WAITING, PENDING_REQUESTS, BATCH, QUEUE_DEPTH, INFLIGHT = 5, 6, 7, 8, 9, 10
WAITING_PREFILL, PENDING_PREFILL, QUEUED_PREFILL, STALENESS, ROUTABLE, MODEL = 11, 12, 13, 14, 15, 16
FIELDS = 17


def _row(replica: ReplicaLoad, model_code: float) -> tuple[float, ...]:
    room = replica.free_blocks - replica.pending_blocks
    waiting = replica.num_waiting + replica.pending_requests
    return (
        replica.block_size,
        replica.free_blocks,
        replica.pending_blocks,
        replica.total_blocks,
        room if room > 0 else 0,  # projected free blocks
        replica.num_running,
        replica.num_waiting,
        replica.pending_requests,
        replica.num_running + waiting,  # batch size
        waiting,  # queue depth
        replica.inflight_requests,
        replica.waiting_prefill_tokens,
        replica.pending_prefill_tokens,
        replica.waiting_prefill_tokens + replica.pending_prefill_tokens,
        replica.staleness_s,
        replica.healthy and not replica.draining and not replica.circuit_open,
        model_code,
    )


@dataclass(eq=False, slots=True)
class ModelCodes:
    """A number per model name, stable for the life of the cache (the model column holds these)."""

    codes: dict[str, float] = field(default_factory=dict)

    def find(self, model: str) -> float | None:
        return self.codes.get(model)

    def code(self, model: str) -> float:
        found = self.codes.get(model)
        if found is None:
            found = self.codes[model] = float(len(self.codes))
        return found


class FleetColumns:
    """The numbers of ``replicas``, one column per field (``values[FIELD]``) in replica order.

    ``previous`` and ``changed`` (the rows whose load differs from it) let the lazily built speed
    columns reuse the previous columns' rows; the link is dropped once a newer view is seen.
    ``block_size`` and ``model`` are the block size and model code every replica shares, or None.
    """

    __slots__ = (
        "_decode_steps",
        "_prefill_rates",
        "block_size",
        "changed",
        "everyone",
        "ids",
        "model",
        "models",
        "previous",
        "replicas",
        "speeds",
        "values",
    )

    def __init__(
        self,
        replicas: tuple[ReplicaLoad, ...],
        ids: list[str],
        values: Floats,
        models: ModelCodes,
        speeds: SpeedCache,
        previous: FleetColumns | None = None,
        changed: Sequence[int] = (),
    ) -> None:
        self.replicas, self.ids, self.values = replicas, ids, values
        self.models, self.speeds, self.previous, self.changed = models, speeds, previous, changed
        self._prefill_rates: Floats | None = None
        self._decode_steps: Floats | None = None
        block_size = model = None
        if previous is not None:
            self.everyone: Rows = previous.everyone
            block_size, model = previous.block_size, previous.model
            changed_values = [values[BLOCK_SIZE, i] for i in changed], [values[MODEL, i] for i in changed]
            if block_size is not None and any(size != block_size for size in changed_values[0]):
                block_size = None
            if model is not None and any(code != model for code in changed_values[1]):
                model = None
        else:
            self.everyone = np.arange(len(replicas))
        self.block_size: float | None = block_size if block_size is not None else _shared(values[BLOCK_SIZE])
        self.model: float | None = model if model is not None else _shared(values[MODEL])

    @classmethod
    def build(
        cls,
        replicas: Sequence[ReplicaLoad],
        models: ModelCodes | None = None,
        speeds: SpeedCache | None = None,
    ) -> FleetColumns:
        models = models if models is not None else ModelCodes()
        code = models.code
        rows = [_row(r, code(r.model)) for r in replicas]
        values = np.array(rows, dtype=np.float64).T.copy() if rows else np.empty((FIELDS, 0))
        return cls(tuple(replicas), [r.replica_id for r in replicas], values, models, speeds or SpeedCache())

    def updated(self, replicas: tuple[ReplicaLoad, ...], changed: Sequence[int]) -> FleetColumns:
        """These columns with the rows ``changed`` taken from ``replicas`` (same length)."""
        values, ids, code = self.values.copy(), self.ids.copy(), self.models.code
        for index in changed:
            replica = replicas[index]
            values[:, index] = _row(replica, code(replica.model))
            ids[index] = replica.replica_id
        newer = FleetColumns(replicas, ids, values, self.models, self.speeds, self, changed)
        self.previous = None  # keep one link, not a chain
        return newer

    @property
    def prefill_rates(self) -> Floats:
        """Each replica's prefill rate (tokens/s) given its running decodes, correction included."""
        rates = self._prefill_rates
        if rates is None:
            previous = self.previous
            rate = self.speeds.prefill_tokens_per_s
            if previous is not None and previous._prefill_rates is not None:
                rates = previous._prefill_rates.copy()
                for index in self.changed:
                    rates[index] = rate(self.replicas[index])
            else:
                rates = np.array([rate(r) for r in self.replicas], dtype=np.float64)
            self._prefill_rates = rates
        return rates

    @property
    def decode_steps(self) -> Floats:
        """Two rows: the decode step with one more sequence in the replica's batch (running +
        waiting + unacknowledged), and how much that step exceeds the current one."""
        steps = self._decode_steps
        if steps is None:
            previous = self.previous
            if previous is not None and previous._decode_steps is not None:
                steps = previous._decode_steps.copy()
                for index in self.changed:
                    steps[:, index] = self._steps_of(self.replicas[index])
            else:
                steps = np.array([self._steps_of(r) for r in self.replicas], dtype=np.float64).T.copy()
                steps = steps if len(self.replicas) else np.empty((2, 0))
            self._decode_steps = steps
        return steps

    def _steps_of(self, replica: ReplicaLoad) -> tuple[float, float]:
        batch = replica.batch_size
        step_with_s = self.speeds.decode_step_s(replica, batch + 1)
        return step_with_s, step_with_s - self.speeds.decode_step_s(replica, batch)


def _shared(values: Floats) -> float | None:
    """The value every element of ``values`` has, or None."""
    if not len(values):
        return None
    first = float(values[0])
    return first if np.count_nonzero(values != first) == 0 else None


def lowest(values: Floats) -> float:
    """The least of ``values`` (NaN if any is NaN); ``values`` must not be empty."""
    return float(values[values.argmin()])


def highest(values: Floats) -> float:
    """The greatest of ``values`` (NaN if any is NaN); ``values`` must not be empty."""
    return float(values[values.argmax()])


def filled(count: int, value: float) -> Floats:
    column = np.empty(count)
    column.fill(value)
    return column


def every(mask: Mask) -> bool:
    return int(np.count_nonzero(mask)) == len(mask)


def some(mask: Mask) -> bool:
    return int(np.count_nonzero(mask)) > 0


@dataclass(eq=False, slots=True)
class ColumnCache:
    """The columns of the last view seen, brought up to date for the next one."""

    models: ModelCodes = field(default_factory=ModelCodes)
    speeds: SpeedCache = field(default_factory=SpeedCache)
    _latest: FleetColumns | None = None

    def columns(self, replicas: Sequence[ReplicaLoad]) -> FleetColumns:
        latest = self._latest
        loads = replicas if type(replicas) is tuple else tuple(replicas)
        if latest is not None:
            if latest.replicas is loads:
                return latest
            if len(latest.replicas) == len(loads):
                changed = list(compress(range(len(loads)), map(is_not, latest.replicas, loads)))
                if len(changed) * 4 <= len(loads):
                    latest = self._latest = latest.updated(loads, changed)
                    return latest
        latest = self._latest = FleetColumns.build(loads, self.models, self.speeds)
        return latest


class Candidates:
    """Some rows of a :class:`FleetColumns` (ascending): the candidates still in a decision, with
    their columns, replica ids and prefix matches gathered once and shared by every plugin."""

    __slots__ = (
        "_columns",
        "_ids",
        "_matches",
        "_matches_for",
        "block_size",
        "everyone",
        "fleet",
        "model",
        "rows",
    )

    def __init__(self, fleet: FleetColumns, rows: Rows | None = None) -> None:
        self.fleet = fleet
        self.block_size, self.model = fleet.block_size, fleet.model  # what every candidate shares
        self.everyone = rows is None
        self.rows: Rows = fleet.everyone if rows is None else rows
        self._columns: dict[int, Floats] = {}
        self._ids: list[str] | None = fleet.ids if rows is None else None
        self._matches: Floats | None = None
        self._matches_for: RoutingRequest | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def kept(self, mask: Mask) -> Candidates:
        """The candidates where ``mask`` (one flag per candidate) is true."""
        kept = Candidates(self.fleet, self.rows[mask])
        if self._matches is not None:
            kept._matches, kept._matches_for = self._matches[mask], self._matches_for
        return kept

    def column(self, index: int) -> Floats:
        if self.everyone:
            whole: Floats = self.fleet.values[index]
            return whole
        column = self._columns.get(index)
        if column is None:
            column = self._columns[index] = self.fleet.values[index][self.rows]
        return column

    @property
    def ids(self) -> list[str]:
        ids = self._ids
        if ids is None:
            fleet_ids = self.fleet.ids
            ids = self._ids = [fleet_ids[i] for i in self.rows.tolist()]
        return ids

    def loads(self) -> list[ReplicaLoad]:
        replicas = self.fleet.replicas
        return list(replicas) if self.everyone else [replicas[i] for i in self.rows.tolist()]

    def prefill_rates(self) -> Floats:
        rates = self.fleet.prefill_rates
        return rates if self.everyone else rates[self.rows]

    def decode_steps(self) -> Floats:
        steps = self.fleet.decode_steps
        return steps if self.everyone else steps[:, self.rows]

    def matched_blocks(self, request: RoutingRequest, view: ClusterView) -> Floats:
        """Leading blocks of the request's prompt each candidate holds in its prefix cache."""
        if self._matches_for is not request or self._matches is None:
            hashes = request.block_hashes
            if hashes:
                self._matches = np.array(match_counts(view.prefix, self.ids, hashes), dtype=np.float64)
            else:
                self._matches = np.zeros(len(self.rows))
            self._matches_for = request
        return self._matches


def candidates_of(replicas: Sequence[ReplicaLoad]) -> Candidates:
    """Every replica of ``replicas`` as candidates, with fresh columns (for one-off scoring)."""
    return Candidates(FleetColumns.build(replicas))


def loads_where(loads: Sequence[ReplicaLoad], mask: Mask) -> Sequence[ReplicaLoad]:
    """The loads whose flag in ``mask`` is set, in order (``loads`` itself when all are)."""
    return loads if every(mask) else list(compress(loads, mask.tolist()))


def scores_by_id(candidates: Candidates, scores: Floats) -> dict[str, float]:
    """A column of scores as a mapping from replica id (the record form of a scorer's answer)."""
    return dict(zip(candidates.ids, scores.tolist(), strict=True))
