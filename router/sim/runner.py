"""One call per simulation: a trace, a fleet and a policy name in, a :class:`SimResult` out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from replica_agent.engine.request import RequestSpec
from router.policy.registry import build_policy
from router.sim.fleet import FleetSpec, build_fleet
from router.sim.report import SimResult
from router.sim.simulator import SimConfig, Simulator
from router.sim.traces import (
    TraceFormatError,
    TraceRequest,
    load_azure_csv,
    load_mooncake_jsonl,
    sample_servegen,
    to_specs,
)

DEFAULT_SERVEGEN_REQUESTS = 1000
DEFAULT_SERVEGEN_RATE_PER_S = 10.0


def load_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Azure ``.csv``, Mooncake ``.jsonl``, or a ServeGen directory (Poisson arrivals at
    ``DEFAULT_SERVEGEN_RATE_PER_S``; ``limit`` requests, ``DEFAULT_SERVEGEN_REQUESTS`` without one)."""
    if path.is_dir():
        return sample_servegen(path, limit or DEFAULT_SERVEGEN_REQUESTS, DEFAULT_SERVEGEN_RATE_PER_S)
    if path.suffix == ".csv":
        return load_azure_csv(path, limit)
    if path.suffix == ".jsonl":
        return load_mooncake_jsonl(path, limit)
    raise TraceFormatError(f"{path}: unknown trace format (expected .csv, .jsonl or a ServeGen directory)")


def scaled_specs(
    trace: Sequence[TraceRequest], rate_scale: float = 1.0, duration_s: float | None = None
) -> Iterator[RequestSpec]:
    """Engine requests with arrivals compressed by ``rate_scale`` (2.0 = twice the load), only
    those arriving within ``duration_s`` of scaled time when given."""
    if not rate_scale > 0:
        raise ValueError(f"rate_scale must be positive, got {rate_scale}")
    for spec in to_specs(trace, time_scale=1.0 / rate_scale):
        if duration_s is not None and spec.arrival_time >= duration_s:
            return
        yield spec


def simulate(
    trace: Sequence[TraceRequest],
    fleet: FleetSpec,
    policy: str,
    config: SimConfig | None = None,
    rate_scale: float = 1.0,
    duration_s: float | None = None,
    on_request_done: Callable[[], None] | None = None,
) -> SimResult:
    """Run ``policy`` over ``trace`` on freshly built replicas of ``fleet``."""
    config = config or SimConfig()
    simulator = Simulator(
        build_fleet(fleet, seed=config.seed), build_policy(policy), config, on_request_done=on_request_done
    )
    return simulator.run(scaled_specs(trace, rate_scale, duration_s))
