"""One call per simulation: a trace, a fleet and a policy name in, a :class:`SimResult` out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from replica_agent.engine.request import RequestSpec
from router.sim.fleet import FleetSpec, build_fleet
from router.sim.policies import build_sim_policy, forced_predictor
from router.sim.predict import build_predictor
from router.sim.report import SimResult
from router.sim.simulator import SimConfig, Simulator
from router.sim.sources import load_trace
from router.sim.traces import TraceRequest, prompt_texts, to_specs

__all__ = ["load_trace", "scaled_specs", "simulate"]


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
    predictor: str = "none",
) -> SimResult:
    """Run ``policy`` (a production policy or ``oracle``) over ``trace`` on freshly built replicas
    of ``fleet``, with the length predictor ``predictor`` (see :mod:`router.sim.predict`; a
    simulation-only policy imposes its own)."""
    config = config or SimConfig()
    simulator = Simulator(
        build_fleet(fleet, seed=config.seed),
        build_sim_policy(policy),
        config,
        predictor=build_predictor(forced_predictor(policy) or predictor, config.seed, prompt_texts(trace)),
        on_request_done=on_request_done,
    )
    return simulator.run(scaled_specs(trace, rate_scale, duration_s))
