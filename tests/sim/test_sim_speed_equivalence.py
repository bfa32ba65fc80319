"""The simulator's multi-step decode runs change its speed, never its results.

Each case simulates the same trace with ``multi_step`` on and off and compares the full results
(every request record, drop and replica statistic) with exact float equality.
"""

from __future__ import annotations

import dataclasses

import pytest

from router.sim.fleet import FleetSpec, ReplicaGroup, build_fleet, load_fleet
from router.sim.policies import build_sim_policy
from router.sim.predict import build_predictor
from router.sim.report import SimResult
from router.sim.runner import load_trace, scaled_specs, simulate
from router.sim.simulator import SimConfig, Simulator

MIXED = load_fleet("hetero8")
SMALL_V100 = FleetSpec(name="2xv100", replicas=(ReplicaGroup(gpu="v100-32gb", count=2),))


def _with_engine(fleet: FleetSpec, **engine: object) -> FleetSpec:
    return fleet.model_copy(update={"engine": engine})


CASES = {
    "azure-round_robin": ("azure2023_conv", 300, MIXED, "round_robin", 16.0),
    "azure-sal": ("azure2023_conv", 300, MIXED, "sal", 16.0),
    "azure-prefix": ("azure2023_conv", 300, MIXED, "prefix", 16.0),
    "azure-sal-overloaded": ("azure2023_conv", 300, MIXED, "sal", 80.0),
    "azure-preempting": ("azure2023_conv", 200, SMALL_V100, "least_request", 20.0),
    "azure-memory-aware": (
        "azure2023_conv",
        200,
        _with_engine(MIXED, queue_policy="memory_aware"),
        "least_kv",
        40.0,
    ),
    "mooncake-prefix": ("mooncake_conversation", 120, MIXED, "prefix", 4.0),
    "mooncake-sjf-no-cache": (
        "mooncake_conversation",
        80,
        _with_engine(SMALL_V100, queue_policy="predicted_sjf", enable_prefix_caching=False),
        "prefix",
        8.0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_multi_step_runs_give_identical_results(case: str) -> None:
    trace_name, limit, fleet, policy, rate_scale = CASES[case]
    trace = load_trace(trace_name, limit)
    fast = simulate(trace, fleet, policy, SimConfig(multi_step=True), rate_scale=rate_scale)
    slow = simulate(trace, fleet, policy, SimConfig(multi_step=False), rate_scale=rate_scale)
    assert fast.records == slow.records
    assert fast.dropped == slow.dropped
    assert fast.replicas == slow.replicas
    assert dataclasses.replace(fast, sim_wall_s=0.0) == dataclasses.replace(slow, sim_wall_s=0.0)
    assert len(fast.records) > 0


@pytest.mark.parametrize("policy", ["prefix", "sal"])
def test_engines_taking_the_routers_prompt_hashes_give_identical_results(policy: str) -> None:
    """Engines whose hasher is the router's take its prompt hashes rather than hashing again."""
    trace = load_trace("mooncake_conversation", 80)

    def run(share_hashes: bool) -> SimResult:
        config = SimConfig()
        simulator = Simulator(
            build_fleet(MIXED, seed=config.seed),
            build_sim_policy(policy),
            config,
            predictor=build_predictor("none", config.seed),
        )
        shared = [node.hashes_like_router for node in simulator.nodes]
        assert all(shared)
        if not share_hashes:
            for node in simulator.nodes:
                node.hashes_like_router = False
        return simulator.run(scaled_specs(trace, 4.0))

    shared, own = run(True), run(False)
    assert len(shared.records) > 0
    assert dataclasses.replace(shared, sim_wall_s=0.0) == dataclasses.replace(own, sim_wall_s=0.0)
