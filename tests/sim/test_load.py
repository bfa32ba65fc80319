import pytest

from router.sim.fleet import FleetSpec, ReplicaGroup
from router.sim.load import find_saturation, replica_capacity_rps
from router.sim.simulator import SimConfig
from router.sim.sources import load_trace
from router.sim.sweep import load_points
from router.sim.traces import TraceRequest
from router.sim.workloads import mean_rate_per_s


@pytest.fixture(scope="module")
def trace() -> list[TraceRequest]:
    return load_trace("azure2023_conv", limit=120)


def test_a_faster_gpu_has_a_higher_saturation_rate(trace: list[TraceRequest]) -> None:
    fleet = FleetSpec(replicas=(ReplicaGroup(gpu="h100-80gb"), ReplicaGroup(gpu="v100-32gb")))
    h100, v100 = (replica_capacity_rps(trace, fleet, group) for group in fleet.replicas)
    assert h100 > 2 * v100 > 0


def test_fleet_capacity_is_the_sum_over_its_replicas(trace: list[TraceRequest]) -> None:
    fleet = FleetSpec(replicas=(ReplicaGroup(gpu="a100-80gb", count=3), ReplicaGroup(gpu="v100-32gb")))
    saturation = find_saturation(trace, fleet, probe_requests=120)
    per = saturation.per_replica_rps
    assert set(per) == {"a100-80gb", "v100-32gb"}
    assert saturation.capacity_rps == pytest.approx(3 * per["a100-80gb"] + per["v100-32gb"])
    assert saturation.rate_scale == pytest.approx(saturation.capacity_rps / mean_rate_per_s(trace))


def test_load_scales_are_multiples_of_the_saturation_rate(trace: list[TraceRequest]) -> None:
    fleet = FleetSpec(replicas=(ReplicaGroup(gpu="a100-80gb", count=2),))
    config = SimConfig()
    points, saturation = load_points(trace, fleet, config, load_scales=(0.5, 1.0), probe_requests=120)
    assert saturation is not None
    assert [p.load_scale for p in points] == [0.5, 1.0]
    assert points[1].rate_rps == pytest.approx(saturation.capacity_rps)
    assert points[0].rate_scale == pytest.approx(0.5 * saturation.rate_scale)
    (rated,), none = load_points(trace, fleet, config, rate_rps=12.0)
    assert none is None and rated.load_scale is None
    assert rated.rate_scale * mean_rate_per_s(trace) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="at most one"):
        load_points(trace, fleet, config, load_scales=(1.0,), rate_rps=3.0)
