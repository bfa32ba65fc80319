"""Simulator speed: simulated requests per wall-clock second, and how it scales with the number of
replicas and the trace length.

Fleets are half ``a100-80gb``, half ``h100-80gb``; the trace is ``azure2023_conv`` with its arrivals
compressed in proportion to the fleet size (``RATE_PER_REPLICA`` times the trace's own rate per
replica), a load the fleets sustain (the TTFT p99 column shows no queue building up). The timed
part is ``Simulator.run`` only (building replicas and loading the trace are not counted).
``--profile`` prints where the 16-replica run spends its time (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from typing import Any

from benchmarks.common import TRACES, markdown_table, write_results
from router.policy.registry import build_policy
from router.sim.fleet import FleetSpec, ReplicaGroup, build_fleet
from router.sim.report import SimResult
from router.sim.runner import scaled_specs
from router.sim.simulator import SimConfig, Simulator
from router.sim.traces import TraceRequest, load_azure_csv

POLICY = "round_robin"
RATE_PER_REPLICA = 1.5  # the trace's own rate (about 1.7 requests/s) per replica, times this
TARGET_REQUESTS_PER_S = 1000.0
HEADLINE_REPLICAS = 16


def fleet_of(replicas: int) -> FleetSpec:
    half = replicas // 2
    groups = [ReplicaGroup(gpu="a100-80gb", count=replicas - half)]
    if half:
        groups.append(ReplicaGroup(gpu="h100-80gb", count=half))
    return FleetSpec(name=f"{replicas - half}xa100+{half}xh100", replicas=tuple(groups))


def simulate_once(trace: list[TraceRequest], replicas: int, policy: str = POLICY) -> SimResult:
    simulator = Simulator(build_fleet(fleet_of(replicas)), build_policy(policy), SimConfig())
    return simulator.run(scaled_specs(trace, RATE_PER_REPLICA * replicas))


def measure(trace: list[TraceRequest], replicas: int, policy: str = POLICY) -> dict[str, Any]:
    result = simulate_once(trace, replicas, policy)
    summary = result.summary()
    return {
        "replicas": replicas,
        "policy": policy,
        "requests": len(trace),
        "completed": summary["completed"],
        "dropped": summary["dropped"],
        "sim_wall_s": round(result.sim_wall_s, 3),
        "requests_per_s": round(len(trace) / result.sim_wall_s, 1),
        "simulated_s": round(result.makespan_s, 1),
        "ttft_p99_s": round(float(summary["ttft_p99"]), 4),
    }


def profile_top(trace: list[TraceRequest], replicas: int, lines: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    simulate_once(trace, replicas)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


ROW_HEADERS = [
    "replicas",
    "policy",
    "requests",
    "completed",
    "wall s",
    "requests/s",
    "simulated s",
    "TTFT p99 s",
]


def _row(m: dict[str, Any]) -> list[Any]:
    return [m["replicas"], m["policy"], m["requests"], m["completed"], m["sim_wall_s"], m["requests_per_s"],
            m["simulated_s"], m["ttft_p99_s"]]  # fmt: skip


def run(
    replica_counts: list[int], lengths: list[int], headline_requests: int, save: bool, profile: bool
) -> None:
    started = time.perf_counter()
    full = load_azure_csv(TRACES / "azure2023_conv.csv", limit=max([*lengths, headline_requests]))
    headline = [measure(full[:headline_requests], HEADLINE_REPLICAS, p) for p in (POLICY, "sal")]
    by_replicas = [measure(full[:headline_requests], n) for n in replica_counts]
    by_length = [measure(full[:n], HEADLINE_REPLICAS) for n in lengths]
    best = headline[0]["requests_per_s"]
    verdict = "meets" if best >= TARGET_REQUESTS_PER_S else "misses"
    body = (
        f"`{POLICY}` on `azure2023_conv`, arrivals at {RATE_PER_REPLICA:g}x the trace's rate per replica. "
        f"Headline: {HEADLINE_REPLICAS} replicas, {headline_requests} requests: **{best:,.0f} simulated "
        f"requests per wall second** ({verdict} the {TARGET_REQUESTS_PER_S:,.0f}/s target); `sal` (a "
        "policy that scores every replica on every request) for comparison.\n\n"
        + markdown_table(ROW_HEADERS, [_row(m) for m in headline])
        + f"\n\n### Scaling with replicas ({headline_requests} requests)\n\n"
        + markdown_table(ROW_HEADERS, [_row(m) for m in by_replicas])
        + f"\n\n### Scaling with trace length ({HEADLINE_REPLICAS} replicas)\n\n"
        + markdown_table(ROW_HEADERS, [_row(m) for m in by_length])
        + "\n\nWall-clock figures depend on the machine; rerunning changes them slightly."
    )
    data = {"headline": headline, "by_replicas": by_replicas, "by_length": by_length}
    write_results("sim_speed", "Simulator speed", body, data, started, save)
    if profile:
        print(profile_top(full[:headline_requests], HEADLINE_REPLICAS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the headline run")
    args = parser.parse_args()
    if args.quick:
        run([4, 16], [500, 1000], 1000, save=False, profile=args.profile)
    else:
        run([4, 8, 16, 32], [1000, 5000, 10000], 5000, save=True, profile=args.profile)


if __name__ == "__main__":
    main()
