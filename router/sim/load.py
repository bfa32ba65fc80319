"""Load levels relative to a fleet's saturation point.

Load 1.0 is the fleet's capacity on the trace's request mix: the sum over its replicas of the rate
(requests/s) each one sustains when it never runs out of work. Each distinct replica (GPU type and
memory setting) is measured once, by simulating a burst: the trace's first ``probe_requests``
requests all arriving at t=0 on one replica of that kind, with the fleet's engine settings.
Its rate is the number of completions between the 10th and the 90th percentile of completion
times divided by that span: the window in which the replica is saturated, away from its ramp-up
and its drain. Requests the replica refuses (a prompt over its limits) are left out.

A router that balanced perfectly by time would keep up until load 1.0; a policy that ignores each
GPU's speed saturates the slowest replicas earlier. Load ``L`` runs the trace with its
inter-arrival times divided by ``L x capacity / (the trace's own mean rate)``. A single replica
sees every shared prefix in the burst, so on prefix-heavy traces the capacity is an upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from types import MappingProxyType

from router.policy.registry import build_policy
from router.sim.fleet import FleetSpec, ReplicaGroup, build_fleet
from router.sim.simulator import SimConfig, Simulator
from router.sim.traces import TraceRequest, to_specs
from router.sim.workloads import mean_rate_per_s

DEFAULT_PROBE_REQUESTS = 500
WINDOW = (0.1, 0.9)


@dataclass(frozen=True, slots=True)
class Saturation:
    """``capacity_rps``: the fleet's saturation rate in requests/s; ``rate_scale``: that rate over
    the trace's own mean rate; ``per_replica_rps``: each kind of replica's rate, keyed
    ``<gpu>`` (or ``<gpu>@<memory utilisation>`` when a fleet mixes settings for one GPU)."""

    capacity_rps: float
    rate_scale: float
    per_replica_rps: Mapping[str, float]
    probe_requests: int


def replica_capacity_rps(
    trace: Sequence[TraceRequest], fleet: FleetSpec, group: ReplicaGroup, config: SimConfig | None = None
) -> float:
    """Requests/s one replica of ``group`` completes while saturated by a burst of ``trace``."""
    single = fleet.model_copy(update={"replicas": (group.model_copy(update={"count": 1}),)})
    config = config or SimConfig()
    burst = [replace(request, arrival_s=0.0) for request in trace]
    simulator = Simulator(build_fleet(single, seed=config.seed), build_policy("round_robin"), config)
    result = simulator.run(to_specs(burst))
    ends = sorted(record.arrival_s + record.e2e_s for record in result.records)
    if len(ends) < 10:
        raise ValueError(f"too few requests completed on one {group.gpu} to measure its rate")
    first, last = (int(q * (len(ends) - 1)) for q in WINDOW)
    span = ends[last] - ends[first]
    if not span > 0:
        raise ValueError(f"the burst on one {group.gpu} finished in no time")
    return (last - first) / span


def find_saturation(
    trace: Sequence[TraceRequest],
    fleet: FleetSpec,
    probe_requests: int = DEFAULT_PROBE_REQUESTS,
    config: SimConfig | None = None,
) -> Saturation:
    """The fleet's saturation point on ``trace`` (see the module docstring); cached per process."""
    if probe_requests < 10:
        raise ValueError(f"probe_requests must be at least 10, got {probe_requests}")
    if mean_rate_per_s(trace) <= 0:
        raise ValueError("the trace needs at least two requests with distinct arrival times")
    return _cached_saturation(
        tuple(trace[:probe_requests]), mean_rate_per_s(trace), fleet.model_dump_json(), config or SimConfig()
    )


@lru_cache(maxsize=32)
def _cached_saturation(
    probe: tuple[TraceRequest, ...], trace_rate_rps: float, fleet_json: str, config: SimConfig
) -> Saturation:
    fleet = FleetSpec.model_validate_json(fleet_json)
    kinds = {(g.gpu, g.gpu_memory_utilization) for g in fleet.replicas}
    mixed = {gpu for gpu, _ in kinds if sum(1 for other, _ in kinds if other == gpu) > 1}
    per_kind: dict[str, float] = {}
    capacity = 0.0
    for group in fleet.replicas:
        key = f"{group.gpu}@{group.gpu_memory_utilization:g}" if group.gpu in mixed else group.gpu
        if key not in per_kind:
            per_kind[key] = replica_capacity_rps(probe, fleet, group, config)
        capacity += group.count * per_kind[key]
    return Saturation(capacity, capacity / trace_rate_rps, MappingProxyType(per_kind), len(probe))
