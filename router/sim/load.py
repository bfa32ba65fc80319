"""Load levels relative to a fleet's measured saturation point.

Load 1.0 is the highest arrival rate the fleet sustains under ``round_robin`` on the trace's own
arrival pattern. "Sustains" is measured by simulation on the first ``probe_requests`` requests of the
trace, with their inter-arrival times divided by a rate multiplier m:

    sustainable(m)  <=>  at most 1% of requests are dropped, and the median TTFT of the later half
                         of the arrivals is at most  2 x unloaded TTFT + 0.5 s

where the unloaded TTFT is the cost-model time to prefill the trace's median prompt alone, averaged
over the fleet's replicas, plus the per-request overhead and the router latency. Past saturation
the queues grow for as long as requests keep arriving, so the later arrivals' TTFT diverges.

The search doubles (or halves) m from 1 until sustainability changes, then bisects geometrically
until the bracket is within ``tolerance`` (5%); the saturation multiplier is the highest sustainable
m found. Results are cached in memory per (trace prefix, fleet, probe size, seed, config).
Load L then runs the trace with its arrival times divided by L x m, i.e. at L x the saturation rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from replica_agent.engine.step import BatchShape, SeqShape
from router.sim.fleet import FleetSpec, build_fleet
from router.sim.report import SimResult
from router.sim.runner import simulate
from router.sim.simulator import SimConfig
from router.sim.traces import TraceRequest
from router.sim.workloads import mean_rate_per_s

SATURATION_POLICY = "round_robin"
DEFAULT_PROBE_REQUESTS = 1000
MAX_DROPPED_FRAC = 0.01
TTFT_FACTOR = 2.0
TTFT_ALLOWANCE_S = 0.5
_MAX_DOUBLINGS = 16


@dataclass(frozen=True, slots=True)
class Saturation:
    """``rate_scale``: the multiplier of the trace's own arrival rate at saturation; ``rate_rps``:
    the mean arrival rate there; ``probes``: every (multiplier, sustainable) tried, in order."""

    rate_scale: float
    rate_rps: float
    ttft_bound_s: float
    probes: tuple[tuple[float, bool], ...]


def unloaded_ttft_s(trace: Sequence[TraceRequest], fleet: FleetSpec, config: SimConfig) -> float:
    """Cost-model TTFT of the trace's median prompt on an idle replica, averaged over the fleet."""
    members = build_fleet(fleet, seed=config.seed)
    prompt = int(statistics.median(r.prompt_tokens for r in trace))
    times = []
    for member in members:
        cost = member.replica.cost_model
        limit = member.replica.engine.config.max_model_len
        prefill_s = cost.step_seconds(BatchShape((SeqShape(min(prompt, limit), 0),)))
        times.append(prefill_s + cost.request_overhead_s)
    return config.router_latency_s + sum(times) / len(times)


def is_sustainable(result: SimResult, ttft_bound_s: float) -> bool:
    """Few drops, and the later half of the arrivals got their first token within the bound."""
    if result.requests == 0:
        return True
    if len(result.dropped) > MAX_DROPPED_FRAC * result.requests:
        return False
    records = sorted(result.records, key=lambda r: r.arrival_s)
    later = records[len(records) // 2 :]
    return not later or statistics.median(r.ttft_s for r in later) <= ttft_bound_s


def find_saturation(
    trace: Sequence[TraceRequest],
    fleet: FleetSpec,
    probe_requests: int = DEFAULT_PROBE_REQUESTS,
    config: SimConfig | None = None,
    tolerance: float = 0.05,
) -> Saturation:
    """The fleet's saturation point on the first ``probe_requests`` requests of ``trace`` (see the
    module docstring); cached."""
    if probe_requests < 2 or not tolerance > 0:
        raise ValueError("probe_requests must be at least 2 and tolerance positive")
    prefix = tuple(trace[:probe_requests])
    if mean_rate_per_s(prefix) <= 0:
        raise ValueError("the trace needs at least two requests with distinct arrival times")
    return _cached_saturation(prefix, fleet.model_dump_json(), config or SimConfig(), tolerance)


@lru_cache(maxsize=64)
def _cached_saturation(
    prefix: tuple[TraceRequest, ...], fleet_json: str, config: SimConfig, tolerance: float
) -> Saturation:
    fleet = FleetSpec.model_validate_json(fleet_json)
    bound = TTFT_FACTOR * unloaded_ttft_s(prefix, fleet, config) + TTFT_ALLOWANCE_S
    probes: list[tuple[float, bool]] = []

    def sustainable(multiplier: float) -> bool:
        verdict = is_sustainable(simulate(prefix, fleet, SATURATION_POLICY, config, multiplier), bound)
        probes.append((multiplier, verdict))
        return verdict

    low, high = _bracket(sustainable)
    while high / low > 1.0 + tolerance:
        middle = (low * high) ** 0.5
        low, high = (middle, high) if sustainable(middle) else (low, middle)
    return Saturation(low, low * mean_rate_per_s(prefix), bound, tuple(probes))


def _bracket(sustainable: Callable[[float], bool]) -> tuple[float, float]:
    """Multipliers (low, high = 2 low): low sustainable, high not."""
    multiplier = 1.0
    step = 2.0 if sustainable(multiplier) else 0.5
    for _ in range(_MAX_DOUBLINGS):
        following = multiplier * step
        if sustainable(following) != (step > 1):
            return (multiplier, following) if step > 1 else (following, multiplier)
        multiplier = following
    raise ValueError(f"no saturation point within 2**{_MAX_DOUBLINGS} of the trace's own rate")
