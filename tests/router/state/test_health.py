from __future__ import annotations

import math
from typing import Any

import pytest

from router.state.health import BreakerConfig, CircuitBreaker, CircuitState, HealthConfig, ReplicaHealth


def fail(breaker: CircuitBreaker, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        breaker.record_failure(now)


def test_opens_after_consecutive_failures() -> None:
    breaker = CircuitBreaker()
    fail(breaker, 4)
    assert breaker.state(0.0) is CircuitState.CLOSED and breaker.allows_request(0.0)
    fail(breaker, 1)
    assert breaker.state(0.0) is CircuitState.OPEN and not breaker.allows_request(0.0)


def test_success_resets_consecutive_count() -> None:
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=3, failure_ratio=1.0))
    fail(breaker, 2)
    breaker.record_success(0.0)
    fail(breaker, 2)
    assert breaker.state(0.0) is CircuitState.CLOSED


def test_opens_on_failure_ratio_over_window() -> None:
    config = BreakerConfig(
        consecutive_failures=100, window_size=10, failure_ratio=0.5, min_window_requests=10
    )
    breaker = CircuitBreaker(config)
    for _ in range(4):
        breaker.record_failure(0.0)
        breaker.record_success(0.0)
    breaker.record_success(0.0)
    assert breaker.state(0.0) is CircuitState.CLOSED  # 4 of 9: too few outcomes and below ratio
    breaker.record_failure(0.0)  # 5 of 10
    assert breaker.state(0.0) is CircuitState.OPEN


def test_window_forgets_old_outcomes() -> None:
    config = BreakerConfig(consecutive_failures=100, window_size=4, failure_ratio=0.75, min_window_requests=4)
    breaker = CircuitBreaker(config)
    for outcome in (True, True, False, False, False, True, True):
        (breaker.record_failure if outcome else breaker.record_success)(0.0)
    assert breaker.state(0.0) is CircuitState.CLOSED  # the last 4: ok, ok, failed, failed
    breaker.record_failure(0.0)  # the last 4: ok, failed, failed, failed
    assert breaker.state(0.0) is CircuitState.OPEN


def test_half_open_after_cooldown_allows_one_probe_and_success_closes() -> None:
    breaker = CircuitBreaker()
    fail(breaker, 5, now=10.0)
    assert breaker.next_change_at(10.0) == 11.0
    assert breaker.state(10.99) is CircuitState.OPEN
    assert breaker.state(11.0) is CircuitState.HALF_OPEN and breaker.allows_request(11.0)
    breaker.on_dispatch(11.0)
    assert not breaker.allows_request(11.5)
    breaker.record_success(12.0)
    assert breaker.state(12.0) is CircuitState.CLOSED and breaker.trips == 0
    fail(breaker, 4, now=12.0)
    assert breaker.state(12.0) is CircuitState.CLOSED  # the count restarted on closing


def test_failed_probes_back_off_exponentially_up_to_cap() -> None:
    breaker = CircuitBreaker(BreakerConfig(base_cooldown_s=1.0, max_cooldown_s=5.0))
    fail(breaker, 5, now=0.0)
    now, cooldowns = 0.0, []
    for _ in range(5):
        cooldown = breaker.next_change_at(now) - now
        cooldowns.append(cooldown)
        now += cooldown
        assert breaker.state(now) is CircuitState.HALF_OPEN
        breaker.on_dispatch(now)
        breaker.record_failure(now)
        assert breaker.state(now) is CircuitState.OPEN
    assert cooldowns == [1.0, 2.0, 4.0, 5.0, 5.0]
    breaker.record_success(now + 5.0)
    assert breaker.state(now + 5.0) is CircuitState.CLOSED and breaker.cooldown_s == 1.0


def test_outcomes_while_open_do_not_change_it() -> None:
    breaker = CircuitBreaker()
    fail(breaker, 5, now=0.0)
    breaker.record_success(0.5)
    breaker.record_failure(0.5)
    assert breaker.state(0.5) is CircuitState.OPEN and breaker.next_change_at(0.5) == 1.0


def test_lost_probe_frees_slot_after_timeout() -> None:
    breaker = CircuitBreaker(BreakerConfig(probe_timeout_s=3.0))
    fail(breaker, 5, now=0.0)
    breaker.on_dispatch(1.0)
    assert not breaker.allows_request(3.9) and breaker.next_change_at(3.9) == 4.0
    assert breaker.allows_request(4.0)


def test_passing_check_ends_cooldown_and_failing_checks_open() -> None:
    breaker = CircuitBreaker()
    for _ in range(5):
        breaker.record_check(False, 0.0)
    assert breaker.state(0.0) is CircuitState.OPEN
    breaker.record_check(True, 0.2)
    assert breaker.state(0.2) is CircuitState.HALF_OPEN and breaker.allows_request(0.2)
    breaker.record_check(True, 0.3)
    assert breaker.state(0.3) is CircuitState.HALF_OPEN  # only a real request closes it
    breaker.record_success(0.4)
    assert breaker.state(0.4) is CircuitState.CLOSED


def test_passing_check_resets_consecutive_failures() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_ratio=1.0))
    fail(breaker, 4)
    breaker.record_check(True, 0.0)
    fail(breaker, 4)
    assert breaker.state(0.0) is CircuitState.CLOSED


def test_staleness_penalty_then_ejection_until_fresh_snapshot() -> None:
    health = ReplicaHealth(registered_at=0.0, config=HealthConfig(stale_after_s=1.0, eject_after_s=5.0))
    health.snapshot_received(10.0)
    assert health.staleness_s(10.5) == 0.5 and not health.is_stale(10.5)
    assert health.is_stale(11.5) and health.healthy(11.5)
    assert health.next_change_at(11.5) == 15.0
    assert not health.healthy(15.01) and health.is_ejected(15.01)
    health.snapshot_received(16.0)
    assert health.healthy(16.0) and health.staleness_s(16.0) == 0.0


def test_staleness_counts_from_registration_before_first_snapshot() -> None:
    health = ReplicaHealth(registered_at=100.0)
    assert not health.has_snapshot and health.healthy(104.0)
    assert not health.healthy(105.5)


def test_untracked_staleness_never_ejects() -> None:
    health = ReplicaHealth(registered_at=0.0, tracks_staleness=False)
    assert health.staleness_s(1000.0) == 0.0 and health.healthy(1000.0)
    assert health.next_change_at(1000.0) == math.inf


def test_replica_reporting_unhealthy_is_unhealthy() -> None:
    health = ReplicaHealth(registered_at=0.0)
    health.snapshot_received(0.0, reported_healthy=False)
    assert not health.healthy(0.0)


def test_circuit_open_reflects_breaker() -> None:
    health = ReplicaHealth(registered_at=0.0)
    for _ in range(5):
        health.breaker.record_failure(0.0)
    assert health.circuit_open(0.5) and not health.circuit_open(1.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"consecutive_failures": 0},
        {"window_size": 5, "min_window_requests": 6},
        {"failure_ratio": 0.0},
        {"base_cooldown_s": 10.0, "max_cooldown_s": 5.0},
        {"probe_timeout_s": 0.0},
    ],
)
def test_breaker_config_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**fields)


def test_health_config_validation() -> None:
    with pytest.raises(ValueError):
        HealthConfig(stale_after_s=6.0, eject_after_s=5.0)
