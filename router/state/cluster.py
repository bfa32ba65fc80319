"""The router's mutable picture of the fleet, and the immutable views policies read.

``ClusterState`` ingests every event about the fleet (membership, snapshots, routing decisions,
request outcomes, health checks, observed TTFTs) and builds a :class:`ClusterView` on demand. One
:class:`ReplicaLoad` per registered replica merges its latest snapshot, the router's pending
(unacknowledged) in-flight work, its health, breaker and staleness, and its speed.

Views are cheap: each replica's load is cached and rebuilt only when an event touched that replica,
when a time-driven rule may flip (an ack timeout, a breaker cool-down, staleness ejection), or once
its ``staleness_s`` is more than ``view_resolution_s`` old. So ``staleness_s`` may lag by up to that
resolution; set it to 0 for exact values at the cost of rebuilding every load on every call.

A replica without any snapshot yet (a plain HTTP backend before its first scrape, an agent that
has just joined) appears with zero load and ``total_blocks == free_blocks == 0``: its capacity is
unknown. Policies read that as *full*: ``projected_kv_usage`` is 1.0 and ``kv_headroom`` keeps it
only when no replica with known capacity fits, so known replicas win until it reports; the
router's own ledger still counts what it sent there. ``total_blocks == 0`` is the test for
"unknown capacity".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from protos.snapshot import ReplicaSnapshot
from router.policy.view import ClusterView, ReplicaLoad, ReplicaSpeed
from router.state.health import CircuitState, HealthConfig, ReplicaHealth
from router.state.ledger import DEFAULT_ACK_TIMEOUT_S, InFlightLedger, LedgerEntry
from router.state.prefix_index import PrefixIndex
from router.state.replica import ReplicaDescriptor
from router.state.speed import DEFAULT_CORRECTION_ALPHA, CostModels, SpeedCorrection

DEFAULT_VIEW_RESOLUTION_S = 0.1  # one snapshot period: far below any staleness threshold
# Expired optimistic prefix entries already stop matching; purging them only frees memory.
PREFIX_PURGE_INTERVAL_S = 1.0


@dataclass(eq=False, slots=True)
class _Replica:
    descriptor: ReplicaDescriptor
    health: ReplicaHealth
    correction: SpeedCorrection
    speed: ReplicaSpeed
    snapshot: ReplicaSnapshot | None = None
    draining: bool = False
    load: ReplicaLoad | None = None  # None: rebuild at the next view
    load_valid_until: float = -math.inf


class ClusterState:
    def __init__(
        self,
        *,
        health: HealthConfig | None = None,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        prefix: PrefixIndex | None = None,
        correction_alpha: float = DEFAULT_CORRECTION_ALPHA,
        view_resolution_s: float = DEFAULT_VIEW_RESOLUTION_S,
    ) -> None:
        if view_resolution_s < 0:
            raise ValueError(f"view_resolution_s must be non-negative, got {view_resolution_s}")
        self.health_config = health if health is not None else HealthConfig()
        self.correction_alpha = correction_alpha
        self.view_resolution_s = view_resolution_s
        self._ledger = InFlightLedger(ack_timeout_s)
        self._prefix = prefix if prefix is not None else PrefixIndex()
        self._cost_models = CostModels()
        self._replicas: dict[str, _Replica] = {}
        self._loads: tuple[ReplicaLoad, ...] | None = None
        self._view: ClusterView | None = None
        self._view_version = 0
        self._next_prefix_purge = -math.inf

    @property
    def ledger(self) -> InFlightLedger:
        return self._ledger

    @property
    def prefix(self) -> PrefixIndex:
        return self._prefix

    # --- membership ----------------------------------------------------------------------------

    def register(self, replica: ReplicaDescriptor, now: float) -> None:
        """Add a replica (its staleness grace period starts at ``now``); registering a known id
        again updates its descriptor and keeps its live state."""
        existing = self._replicas.get(replica.replica_id)
        if existing is None:
            correction = SpeedCorrection(self.correction_alpha)
            health = ReplicaHealth(now, self.health_config, tracks_staleness=replica.expects_snapshots)
            speed = self._cost_models.speed(replica.gpu, replica.cost_profile)
            self._replicas[replica.replica_id] = _Replica(replica, health, correction, speed)
        else:
            existing.descriptor = replica
            existing.health.tracks_staleness = replica.expects_snapshots
            factor = existing.correction.value
            existing.speed = self._cost_models.speed(replica.gpu, replica.cost_profile, factor)
        self._touch(replica.replica_id)

    def remove(self, replica_id: str) -> bool:
        """Drop a replica and its prefix-cache knowledge. Its ledger entries stay until released."""
        if self._replicas.pop(replica_id, None) is None:
            return False
        self._prefix.forget(replica_id)
        self._loads = None
        return True

    def set_draining(self, replica_id: str, draining: bool) -> None:
        """Mark a replica as draining (no new requests) or not; KeyError for an unknown id."""
        self._require(replica_id).draining = draining
        self._touch(replica_id)

    def descriptor(self, replica_id: str) -> ReplicaDescriptor | None:
        replica = self._replicas.get(replica_id)
        return None if replica is None else replica.descriptor

    def snapshot(self, replica_id: str) -> ReplicaSnapshot | None:
        """The replica's last snapshot (None before the first, or for an unknown id)."""
        replica = self._replicas.get(replica_id)
        return None if replica is None else replica.snapshot

    def replica_ids(self) -> tuple[str, ...]:
        return tuple(self._replicas)

    def __contains__(self, replica_id: object) -> bool:
        return replica_id in self._replicas

    def __len__(self) -> int:
        return len(self._replicas)

    # --- events --------------------------------------------------------------------------------

    def apply_snapshot(self, snapshot: ReplicaSnapshot, now: float) -> bool:
        """Take in a snapshot received at ``now``; False (and ignored) for an unregistered replica.

        Acknowledges the ledger entries it admitted and feeds its cache events to the prefix index.
        A sequence number lower than the last one means the replica restarted with an empty cache.
        """
        replica = self._replicas.get(snapshot.replica_id)
        if replica is None:
            return False
        previous = replica.snapshot
        if previous is not None and snapshot.seq < previous.seq:
            self._prefix.forget(snapshot.replica_id)
        replica.snapshot = snapshot
        replica.health.snapshot_received(now, snapshot.healthy)
        self._ledger.acknowledge(snapshot.replica_id, snapshot.admitted_ids)
        self._prefix.apply_snapshot(snapshot)
        self._touch(snapshot.replica_id)
        return True

    def record_routed(
        self,
        replica_id: str,
        request_id: str,
        *,
        prompt_tokens: int,
        uncached_prompt_tokens: int,
        predicted_decode_tokens: int,
        blocks: int,
        now: float,
        block_hashes: Sequence[int] = (),
    ) -> LedgerEntry:
        """The router just sent ``request_id`` to ``replica_id``: count it as pending there, expect
        its blocks in the replica's cache, and, in half-open, make it the breaker's probe."""
        entry = self._ledger.add(
            replica_id,
            request_id,
            prompt_tokens,
            uncached_prompt_tokens,
            predicted_decode_tokens,
            blocks,
            now,
        )
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.health.breaker.on_dispatch(now)
            if block_hashes:
                self._prefix.note_routed(replica_id, block_hashes, now)
            self._touch(replica_id)
        return entry

    def release(self, request_id: str) -> LedgerEntry | None:
        """The request finished, was aborted or failed; a no-op for unknown ids."""
        entry = self._ledger.release(request_id)
        if entry is not None:
            self._touch(entry.replica_id)
        return entry

    def record_success(self, replica_id: str, now: float) -> None:
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.health.breaker.record_success(now)
            self._touch(replica_id)

    def record_failure(self, replica_id: str, now: float) -> None:
        """A failure that is the replica's fault (5xx, connection error, timeout)."""
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.health.breaker.record_failure(now)
            self._touch(replica_id)

    def record_check(self, replica_id: str, ok: bool, now: float) -> None:
        """An active health-check result."""
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.health.breaker.record_check(ok, now)
            self._touch(replica_id)

    def observe_ttft(self, replica_id: str, predicted_prefill_s: float, actual_ttft_s: float) -> None:
        """Refine the replica's speed correction (see :class:`SpeedCorrection` for the contract)."""
        replica = self._replicas.get(replica_id)
        if replica is not None and replica.correction.observe(predicted_prefill_s, actual_ttft_s):
            replica.speed = replace(replica.speed, correction=replica.correction.value)
            self._touch(replica_id)

    def circuit_state(self, replica_id: str, now: float) -> CircuitState:
        return self._require(replica_id).health.breaker.state(now)

    # --- views ---------------------------------------------------------------------------------

    def view(self, now: float) -> ClusterView:
        """The fleet at ``now``, replicas in registration order. ``version`` changes whenever the
        loads may have changed; the same view object comes back while nothing did."""
        for replica_id in self._ledger.expire(now):
            self._touch(replica_id)
        if now >= self._next_prefix_purge:
            self._prefix.expire(now)
            self._next_prefix_purge = now + PREFIX_PURGE_INTERVAL_S
        for replica in self._replicas.values():
            if replica.load is None or now >= replica.load_valid_until:
                replica.load = self._build_load(replica, now)
                refresh_at = now + self.view_resolution_s
                replica.load_valid_until = min(refresh_at, replica.health.next_change_at(now))
                self._loads = None
        if self._loads is None:
            self._loads = tuple(r.load for r in self._replicas.values() if r.load is not None)
            self._view_version += 1
        view = self._view
        if view is None or view.time != now or view.replicas is not self._loads:
            view = ClusterView(self._loads, now, self._prefix.at(now), self._view_version)
            self._view = view
        return view

    def _build_load(self, replica: _Replica, now: float) -> ReplicaLoad:
        descriptor, snapshot, health = replica.descriptor, replica.snapshot, replica.health
        pending = self._ledger.pending(descriptor.replica_id)
        return ReplicaLoad(
            replica_id=descriptor.replica_id,
            model=descriptor.model,
            gpu=descriptor.gpu,
            tier=descriptor.tier,
            speed=replica.speed,
            total_blocks=0 if snapshot is None else snapshot.total_blocks,
            free_blocks=0 if snapshot is None else snapshot.free_blocks,
            block_size=descriptor.block_size if snapshot is None else snapshot.block_size,
            num_running=0 if snapshot is None else snapshot.num_running,
            num_waiting=0 if snapshot is None else snapshot.num_waiting,
            waiting_prefill_tokens=0 if snapshot is None else snapshot.waiting_prefill_tokens,
            running_context_tokens=0 if snapshot is None else snapshot.running_context_tokens,
            inflight_requests=self._ledger.inflight(descriptor.replica_id),
            pending_requests=pending.requests,
            pending_prefill_tokens=pending.prefill_tokens,
            pending_decode_tokens=pending.decode_tokens,
            pending_blocks=pending.blocks,
            healthy=health.healthy(now),
            draining=replica.draining or (snapshot is not None and snapshot.draining),
            circuit_open=health.circuit_open(now),
            staleness_s=health.staleness_s(now),
            max_model_len=descriptor.max_model_len,
        )

    def _touch(self, replica_id: str) -> None:
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.load = None

    def _require(self, replica_id: str) -> _Replica:
        replica = self._replicas.get(replica_id)
        if replica is None:
            raise KeyError(f"unknown replica {replica_id!r}")
        return replica
