"""Per-replica health: a circuit breaker fed by request outcomes and active checks, and staleness.

Circuit breaker (passive outlier ejection): the dispatcher reports every request's outcome.
Failures are the replica's fault only (5xx, connection errors, timeouts before the first token);
client errors and client disconnects are not reported as failures. The circuit opens after
``consecutive_failures`` failures in a row, or when at least ``failure_ratio`` of the last
``window_size`` outcomes failed (once the window holds ``min_window_requests``). Open, it refuses
requests for a cool-down that doubles with each re-opening (``base_cooldown_s`` up to
``max_cooldown_s``); then it is half-open and lets one probe request through. The probe's success
closes it (and resets the back-off), its failure re-opens it. A probe that never reports back frees
the slot after ``probe_timeout_s``. Active health-check results feed the same breaker.

Staleness: ``now`` less the time the router last *received* a snapshot (the router's clock, not
the replica's). Past ``stale_after_s`` a replica is suspect; policies see ``staleness_s`` in the
view and may penalise it. Past ``eject_after_s`` it is unhealthy until a fresh snapshot arrives.
Before its first snapshot a replica's staleness counts from its registration, a grace period.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int = 5
    window_size: int = 20
    failure_ratio: float = 0.5
    min_window_requests: int = 10
    base_cooldown_s: float = 1.0
    max_cooldown_s: float = 30.0
    probe_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be at least 1, got {self.consecutive_failures}")
        if not 1 <= self.min_window_requests <= self.window_size:
            raise ValueError(
                f"need 1 <= min_window_requests <= window_size, got {self.min_window_requests} "
                f"and {self.window_size}"
            )
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if not 0.0 < self.base_cooldown_s <= self.max_cooldown_s:
            raise ValueError(
                f"need 0 < base_cooldown_s <= max_cooldown_s, got {self.base_cooldown_s} "
                f"and {self.max_cooldown_s}"
            )
        if not self.probe_timeout_s > 0:
            raise ValueError(f"probe_timeout_s must be positive, got {self.probe_timeout_s}")


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config if config is not None else BreakerConfig()
        self._open = False
        self._opened_at = 0.0
        self._trips = 0  # consecutive openings since the circuit last closed
        self._consecutive_failures = 0
        self._window: deque[bool] = deque(maxlen=self.config.window_size)  # True = failure
        self._window_failures = 0
        self._probe_started_at: float | None = None

    @property
    def cooldown_s(self) -> float:
        """The cool-down of the current (or the next) opening."""
        exponent = max(self._trips - 1, 0)
        return min(self.config.max_cooldown_s, self.config.base_cooldown_s * 2.0**exponent)

    @property
    def trips(self) -> int:
        return self._trips

    def state(self, now: float) -> CircuitState:
        if not self._open:
            return CircuitState.CLOSED
        return CircuitState.OPEN if now < self._opened_at + self.cooldown_s else CircuitState.HALF_OPEN

    def allows_request(self, now: float) -> bool:
        """Closed, or half-open with the probe slot free."""
        state = self.state(now)
        if state is CircuitState.CLOSED:
            return True
        return state is CircuitState.HALF_OPEN and not self._probe_busy(now)

    def on_dispatch(self, now: float) -> None:
        """A request was just sent to the replica: in half-open it is the probe and takes the slot."""
        if self.state(now) is CircuitState.HALF_OPEN and not self._probe_busy(now):
            self._probe_started_at = now

    def record_success(self, now: float) -> None:
        """A success closes a half-open circuit; while open (cooling down) it changes nothing."""
        state = self.state(now)
        if state is CircuitState.OPEN:
            return
        if state is CircuitState.HALF_OPEN:
            self._close()
            return
        self._consecutive_failures = 0
        self._push_outcome(failed=False)

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state is CircuitState.OPEN:
            return
        if state is CircuitState.HALF_OPEN:
            self._trip(now)
            return
        self._consecutive_failures += 1
        self._push_outcome(failed=True)
        if self._consecutive_failures >= self.config.consecutive_failures or self._ratio_exceeded():
            self._trip(now)

    def record_check(self, ok: bool, now: float) -> None:
        """An active health check: a pass ends an open circuit's cool-down early (the next request
        is the probe); a failure counts like a failed request."""
        if not ok:
            self.record_failure(now)
        elif self.state(now) is CircuitState.OPEN:
            self._opened_at = now - self.cooldown_s
        elif self.state(now) is CircuitState.CLOSED:
            self._consecutive_failures = 0

    def next_change_at(self, now: float) -> float:
        """The earliest time after ``now`` at which ``allows_request`` may change by itself."""
        state = self.state(now)
        if state is CircuitState.OPEN:
            return self._opened_at + self.cooldown_s
        if state is CircuitState.HALF_OPEN and self._probe_busy(now) and self._probe_started_at is not None:
            return self._probe_started_at + self.config.probe_timeout_s
        return math.inf

    def _probe_busy(self, now: float) -> bool:
        started = self._probe_started_at
        return started is not None and now < started + self.config.probe_timeout_s

    def _ratio_exceeded(self) -> bool:
        seen = len(self._window)
        if seen < self.config.min_window_requests:
            return False
        return self._window_failures >= self.config.failure_ratio * seen

    def _push_outcome(self, failed: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_failures -= 1
        self._window.append(failed)
        self._window_failures += failed

    def _trip(self, now: float) -> None:
        self._open = True
        self._opened_at = now
        self._trips += 1
        self._probe_started_at = None

    def _close(self) -> None:
        self._open = False
        self._trips = 0
        self._consecutive_failures = 0
        self._window.clear()
        self._window_failures = 0
        self._probe_started_at = None


@dataclass(frozen=True, slots=True)
class HealthConfig:
    stale_after_s: float = 1.0
    eject_after_s: float = 5.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.stale_after_s <= self.eject_after_s:
            raise ValueError(
                f"need 0 < stale_after_s <= eject_after_s, got {self.stale_after_s} and {self.eject_after_s}"
            )


class ReplicaHealth:
    """Everything that decides whether one replica may take requests.

    ``tracks_staleness`` is False for a backend the router never expects snapshots from (a plain
    HTTP server nobody scrapes): its staleness stays 0 and only the breaker judges it.
    """

    def __init__(
        self, registered_at: float, config: HealthConfig | None = None, tracks_staleness: bool = True
    ) -> None:
        self.config = config if config is not None else HealthConfig()
        self.breaker = CircuitBreaker(self.config.breaker)
        self.tracks_staleness = tracks_staleness
        self._heard_at = registered_at
        self._reported_healthy = True
        self._has_snapshot = False

    @property
    def has_snapshot(self) -> bool:
        return self._has_snapshot

    def snapshot_received(self, now: float, reported_healthy: bool = True) -> None:
        self._heard_at = max(self._heard_at, now)
        self._reported_healthy = reported_healthy
        self._has_snapshot = True

    def staleness_s(self, now: float) -> float:
        return max(0.0, now - self._heard_at) if self.tracks_staleness else 0.0

    def is_stale(self, now: float) -> bool:
        return self.staleness_s(now) > self.config.stale_after_s

    def is_ejected(self, now: float) -> bool:
        """Silent for longer than ``eject_after_s``: unhealthy until a fresh snapshot arrives."""
        return self.staleness_s(now) > self.config.eject_after_s

    def healthy(self, now: float) -> bool:
        return self._reported_healthy and not self.is_ejected(now)

    def circuit_open(self, now: float) -> bool:
        return not self.breaker.allows_request(now)

    def next_change_at(self, now: float) -> float:
        """The earliest time after ``now`` at which ``healthy`` or ``circuit_open`` may flip by itself."""
        ejection = self._heard_at + self.config.eject_after_s
        staleness = ejection if self.tracks_staleness and ejection >= now else math.inf
        return min(staleness, self.breaker.next_change_at(now))
