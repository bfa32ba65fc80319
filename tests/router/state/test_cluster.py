from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pytest

from router.policy.view import ReplicaLoad
from router.state.cluster import ClusterState
from router.state.health import BreakerConfig, CircuitState, HealthConfig
from router.state.replica import ReplicaDescriptor
from tests.router.state.helpers import descriptor, snapshot


def load(state: ClusterState, now: float, replica_id: str = "r1") -> ReplicaLoad:
    found = state.view(now).get(replica_id)
    assert found is not None
    return found


def route(
    state: ClusterState, request_id: str, now: float, replica_id: str = "r1", hashes: Sequence[int] = ()
) -> None:
    state.record_routed(
        replica_id,
        request_id,
        prompt_tokens=1000,
        uncached_prompt_tokens=600,
        predicted_decode_tokens=200,
        blocks=75,
        now=now,
        block_hashes=hashes,
    )


def exact_state(**settings: Any) -> ClusterState:
    """A cluster whose views are rebuilt on every call, so staleness values are exact."""
    return ClusterState(view_resolution_s=0.0, **settings)


def test_replica_without_snapshot_has_zero_load_and_unknown_capacity() -> None:
    state = exact_state()
    state.register(descriptor("r1", transport="http", block_size=32), now=0.0)
    got = load(state, 0.0)
    assert got.total_blocks == 0 and got.free_blocks == 0 and got.block_size == 32
    assert got.num_running == got.num_waiting == got.inflight_requests == 0
    assert got.healthy and not got.circuit_open and got.projected_kv_usage == 1.0
    assert got.max_model_len == 8192 and got.tier == "cloud"


def test_snapshot_fills_load_and_pending_ledger_adds_on_top() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.apply_snapshot(snapshot(free_blocks=800, num_waiting=2), now=0.1)
    route(state, "a", now=0.2)
    got = load(state, 0.2)
    assert (got.total_blocks, got.free_blocks, got.num_running) == (1000, 800, 3)
    assert got.pending_requests == 1 and got.pending_prefill_tokens == 600
    assert got.pending_decode_tokens == 200 and got.pending_blocks == 75
    assert got.inflight_requests == 1 and got.queue_depth == 3
    assert got.staleness_s == pytest.approx(0.1)


def test_snapshot_admission_folds_pending_entry() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    route(state, "a", now=0.0)
    state.apply_snapshot(snapshot(admitted_ids=("a",)), now=0.1)
    got = load(state, 0.1)
    assert got.pending_requests == 0 and got.pending_blocks == 0 and got.inflight_requests == 1
    state.release("a")
    assert load(state, 0.1).inflight_requests == 0


def test_unacknowledged_entry_expires_from_view() -> None:
    state = exact_state(ack_timeout_s=2.0)
    state.register(descriptor("r1"), now=0.0)
    state.apply_snapshot(snapshot(), now=0.0)
    route(state, "a", now=0.0)
    assert load(state, 1.9).pending_requests == 1
    got = load(state, 2.0)
    assert got.pending_requests == 0 and got.inflight_requests == 1


def test_staleness_penalised_then_ejected_until_fresh_snapshot() -> None:
    state = exact_state(health=HealthConfig(stale_after_s=1.0, eject_after_s=5.0))
    state.register(descriptor("r1"), now=0.0)
    state.apply_snapshot(snapshot(), now=1.0)
    assert load(state, 2.5).staleness_s == pytest.approx(1.5) and load(state, 2.5).healthy
    assert not load(state, 6.5).healthy
    state.apply_snapshot(snapshot(seq=2), now=7.0)
    assert load(state, 7.0).healthy and load(state, 7.0).staleness_s == 0.0


def test_replica_that_never_reports_is_ejected_after_grace_period() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.register(descriptor("r2", transport="http", expects_snapshots=False), now=0.0)
    view = state.view(6.0)
    assert [r.healthy for r in view.replicas] == [False, True]


def test_unhealthy_and_draining_flags_merge() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.register(descriptor("r2"), now=0.0)
    state.apply_snapshot(snapshot("r1", healthy=False), now=0.0)
    state.apply_snapshot(snapshot("r2", draining=True), now=0.0)
    assert not load(state, 0.0, "r1").healthy and load(state, 0.0, "r2").draining
    state.set_draining("r1", True)
    assert load(state, 0.0, "r1").draining
    state.set_draining("r1", False)
    assert not load(state, 0.0, "r1").draining
    with pytest.raises(KeyError):
        state.set_draining("nope", True)


def test_circuit_opens_on_failures_and_routing_takes_the_probe() -> None:
    state = exact_state(health=HealthConfig(breaker=BreakerConfig(consecutive_failures=2)))
    state.register(descriptor("r1"), now=0.0)
    state.record_failure("r1", now=0.0)
    assert not load(state, 0.0).circuit_open
    state.record_failure("r1", now=0.0)
    assert load(state, 0.5).circuit_open
    assert not load(state, 1.0).circuit_open  # half-open: one probe may go
    assert state.circuit_state("r1", 1.0) is CircuitState.HALF_OPEN
    route(state, "probe", now=1.0)
    assert load(state, 1.0).circuit_open
    state.record_success("r1", now=1.2)
    assert not load(state, 1.2).circuit_open and state.circuit_state("r1", 1.2) is CircuitState.CLOSED


def test_health_checks_feed_the_breaker() -> None:
    state = exact_state(health=HealthConfig(breaker=BreakerConfig(consecutive_failures=1)))
    state.register(descriptor("r1"), now=0.0)
    state.record_check("r1", ok=False, now=0.0)
    assert load(state, 0.0).circuit_open
    state.record_check("r1", ok=True, now=0.1)
    assert not load(state, 0.1).circuit_open


def test_events_for_unknown_replicas_are_ignored() -> None:
    state = exact_state()
    assert not state.apply_snapshot(snapshot("ghost"), now=0.0)
    state.record_success("ghost", now=0.0)
    state.record_failure("ghost", now=0.0)
    state.record_check("ghost", ok=False, now=0.0)
    state.observe_ttft("ghost", 0.1, 0.2)
    route(state, "a", now=0.0, replica_id="ghost")
    assert state.view(0.0).replicas == () and state.ledger.inflight("ghost") == 1


def test_prefix_index_fed_by_snapshots_and_routing() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.apply_snapshot(snapshot(new_cached_hashes=(1, 2)), now=0.0)
    route(state, "a", now=0.0, hashes=(1, 2, 3, 4))
    view = state.view(0.0)
    assert view.prefix.match_blocks("r1", [1, 2, 3, 4, 5]) == 4
    late = state.view(state.prefix.optimistic_ttl_s + 1.0)
    assert late.prefix.match_blocks("r1", [1, 2, 3, 4]) == 2


def test_sequence_reset_means_restart_and_clears_prefix_cache() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.apply_snapshot(snapshot(seq=10, new_cached_hashes=(1, 2)), now=0.0)
    state.apply_snapshot(snapshot(seq=1, new_cached_hashes=(5,)), now=0.1)
    assert state.view(0.1).prefix.match_blocks("r1", [1]) == 0
    assert state.view(0.1).prefix.match_blocks("r1", [5]) == 1


def test_remove_and_reregister() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.register(descriptor("r2"), now=0.0)
    state.apply_snapshot(snapshot("r1", new_cached_hashes=(1,)), now=0.0)
    assert state.remove("r1") and not state.remove("r1")
    assert [r.replica_id for r in state.view(0.0).replicas] == ["r2"]
    assert state.prefix.match_blocks("r1", [1]) == 0
    state.register(descriptor("r2", address="new:1"), now=0.0)
    assert len(state) == 1
    descriptor_now = state.descriptor("r2")
    assert descriptor_now is not None and descriptor_now.address == "new:1"


def test_speed_from_profiles_shared_and_none_for_unknown_hardware() -> None:
    state = exact_state()
    state.register(descriptor("r1"), now=0.0)
    state.register(descriptor("r2"), now=0.0)
    state.register(descriptor("r3", gpu="mystery-gpu"), now=0.0)
    state.register(descriptor("r4", model="meta-llama/Llama-3.1-8B", model_profile="llama-3.1-8b"), now=0.0)
    speeds = [r.speed for r in state.view(0.0).replicas]
    assert speeds[0].cost_model is not None and speeds[0].cost_model is speeds[1].cost_model
    assert speeds[2].cost_model is None and speeds[3].cost_model is speeds[0].cost_model


def test_observed_ttft_becomes_speed_correction() -> None:
    state = exact_state(correction_alpha=0.5)
    state.register(descriptor("r1"), now=0.0)
    state.observe_ttft("r1", predicted_prefill_s=1.0, actual_ttft_s=0.5)
    assert load(state, 0.0).speed.correction == pytest.approx(1.5)
    for _ in range(50):
        state.observe_ttft("r1", predicted_prefill_s=10.0, actual_ttft_s=0.1)
    assert (
        load(state, 0.0).speed.correction == pytest.approx(4.0) and load(state, 0.0).speed.correction <= 4.0
    )


def test_view_is_cached_until_something_changes() -> None:
    state = ClusterState(view_resolution_s=0.05)
    state.register(descriptor("r1"), now=0.0)
    state.register(descriptor("r2"), now=0.0)
    state.apply_snapshot(snapshot("r1"), now=0.0)
    first = state.view(0.0)
    assert state.view(0.0) is first
    later = state.view(0.01)
    assert later.replicas is first.replicas and later.version == first.version and later.time == 0.01
    route(state, "a", now=0.02, replica_id="r2")
    changed = state.view(0.02)
    assert changed.version > first.version
    assert changed.replicas[0] is first.replicas[0] and changed.replicas[1].pending_requests == 1
    assert state.view(0.2).replicas[0].staleness_s == pytest.approx(0.2)


def test_cached_view_still_flips_on_time_driven_rules() -> None:
    state = ClusterState(
        view_resolution_s=10.0, health=HealthConfig(breaker=BreakerConfig(consecutive_failures=1))
    )
    state.register(descriptor("r1"), now=0.0)
    state.apply_snapshot(snapshot(), now=0.0)
    state.record_failure("r1", now=0.0)
    assert load(state, 0.5).circuit_open
    assert not load(state, 1.0).circuit_open
    assert load(state, 4.0).healthy and not load(state, 5.5).healthy


def test_view_of_hundreds_of_replicas_is_fast() -> None:
    state = ClusterState()
    for index in range(500):
        replica_id = f"r{index}"
        state.register(descriptor(replica_id, gpu=("a100-80gb", "h100-80gb", "a40-48gb")[index % 3]), now=0.0)
        state.apply_snapshot(snapshot(replica_id), now=0.0)
    state.view(0.0)
    started = time.perf_counter()
    for index in range(500):
        state.apply_snapshot(snapshot(f"r{index}", seq=2), now=0.01)
    state.view(0.01)
    full_rebuild_s = time.perf_counter() - started
    incremental_s = math.inf
    for step in range(100):
        started = time.perf_counter()
        route(state, f"q{step}", now=0.01, replica_id=f"r{step}")
        state.view(0.01)
        incremental_s = min(incremental_s, time.perf_counter() - started)
    # A ratio measured in one run, not a wall-clock threshold: one routed request must not cost
    # anything like rebuilding all 500 replicas.
    assert incremental_s * 20 < full_rebuild_s


def test_descriptor_validation() -> None:
    with pytest.raises(ValueError):
        ReplicaDescriptor("r1", "m", "g", "cloud", "a", transport="smoke")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        descriptor(tier="moon")
    with pytest.raises(ValueError):
        descriptor(block_size=0)
    with pytest.raises(ValueError):
        descriptor(max_model_len=-1)
    with pytest.raises(ValueError):
        descriptor("")
    with pytest.raises(ValueError):
        ClusterState(view_resolution_s=-1.0)
