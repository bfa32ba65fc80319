"""A sweep: every policy at every load level over one trace and fleet, as ``fleetroute simulate`` runs it.

A load level is given one of three ways: relative to the fleet's saturation point (``load_scale``,
see :mod:`router.sim.load`), as a mean arrival rate in requests/s (``rate_rps``), or as a
multiplier of the trace's own arrival rate (``rate_scale``). Each run builds fresh replicas and a
fresh policy, so runs are independent and, for a given seed, deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from router.sim.fleet import FleetSpec
from router.sim.load import DEFAULT_PROBE_REQUESTS, Saturation, find_saturation
from router.sim.report import SimResult
from router.sim.runner import simulate
from router.sim.simulator import SimConfig
from router.sim.traces import TraceRequest
from router.sim.workloads import mean_rate_per_s

Summary = dict[str, float | int | str | None]


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """``rate_scale``: the multiplier of the trace's own arrival rate; ``rate_rps``: the mean
    arrival rate it gives; ``load_scale``: that rate over the fleet's saturation rate, when known."""

    rate_scale: float
    rate_rps: float
    load_scale: float | None = None


def load_points(
    trace: Sequence[TraceRequest],
    fleet: FleetSpec,
    config: SimConfig,
    load_scales: Sequence[float] = (),
    rate_rps: float | None = None,
    rate_scale: float | None = None,
    probe_requests: int = DEFAULT_PROBE_REQUESTS,
) -> tuple[list[LoadPoint], Saturation | None]:
    """The load levels to run (at most one way of giving them; none means the trace's own rate)
    and the saturation point when load scales needed it."""
    if sum(bool(given) for given in (load_scales, rate_rps is not None, rate_scale is not None)) > 1:
        raise ValueError("give at most one of load scales, a rate and a rate scale")
    for value in (*load_scales, rate_rps, rate_scale):
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"load scales and rates must be positive and finite, got {value}")
    own_rate = mean_rate_per_s(trace)
    if own_rate <= 0:
        raise ValueError("the trace needs at least two requests with distinct arrival times")
    if load_scales:
        saturation = find_saturation(trace, fleet, probe_requests, config)
        points = [
            LoadPoint(load * saturation.rate_scale, load * saturation.capacity_rps, load)
            for load in load_scales
        ]
        return points, saturation
    if rate_rps is not None:
        return [LoadPoint(rate_rps / own_rate, rate_rps)], None
    scale = 1.0 if rate_scale is None else rate_scale
    return [LoadPoint(scale, scale * own_rate)], None


@dataclass(frozen=True, slots=True)
class SweepRun:
    policy: str
    point: LoadPoint
    predictor: str
    result: SimResult

    def summary(self, slo_ttft_s: float, slo_tpot_s: float) -> Summary:
        """The run's summary, led by its policy and load (``load_scale`` null when not known)."""
        summary: Summary = {"policy": self.policy, "load_scale": self.point.load_scale}
        summary.update(self.result.summary(slo_ttft_s, slo_tpot_s))
        summary.update(
            rate_scale=self.point.rate_scale, rate_rps=self.point.rate_rps, predictor=self.predictor
        )
        return summary


def sweep(
    trace: Sequence[TraceRequest],
    fleet: FleetSpec,
    policies: Sequence[str],
    points: Sequence[LoadPoint],
    config: SimConfig,
    predictor: str = "none",
    duration_s: float | None = None,
    on_request_done: Callable[[str, LoadPoint], Callable[[], None] | None] | None = None,
) -> Iterator[SweepRun]:
    """Every policy at every load point, load by load; ``on_request_done(policy, point)`` may give
    a callback the run calls as each request ends (for progress bars)."""
    for point in points:
        for policy in policies:
            callback = None if on_request_done is None else on_request_done(policy, point)
            result = simulate(
                trace,
                fleet,
                policy,
                config,
                rate_scale=point.rate_scale,
                duration_s=duration_s,
                on_request_done=callback,
                predictor=predictor,
            )
            yield SweepRun(policy, point, predictor, result)


def expected_requests(trace: Sequence[TraceRequest], point: LoadPoint, duration_s: float | None) -> int:
    """How many of the trace's requests a run at ``point`` simulates."""
    if duration_s is None:
        return len(trace)
    return sum(r.arrival_s / point.rate_scale < duration_s for r in trace)
