"""Simulator speed: simulated requests per wall-clock second, and how it scales with the number of
replicas and the trace length.

Fleets are half ``a100-80gb``, half ``h100-80gb``; the trace is ``azure2023_conv`` with its arrivals
compressed in proportion to the fleet size (``RATE_PER_REPLICA`` times the trace's own rate per
replica), a load the fleets sustain (the TTFT p99 column shows no queue building up). The timed
part is ``Simulator.run`` only (building replicas and loading the trace are not counted); CPU
seconds are reported next to wall seconds because a shared machine stretches the latter.
The headline also runs with ``SimConfig(multi_step=False)`` (one engine step per event, the
simulator's results are identical) to show what the multi-step decode runs are worth.
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
HEADLINE_REPEATS = 3  # headline rows are the best of this many runs


def fleet_of(replicas: int) -> FleetSpec:
    half = replicas // 2
    groups = [ReplicaGroup(gpu="a100-80gb", count=replicas - half)]
    if half:
        groups.append(ReplicaGroup(gpu="h100-80gb", count=half))
    return FleetSpec(name=f"{replicas - half}xa100+{half}xh100", replicas=tuple(groups))


def simulate_once(
    trace: list[TraceRequest], replicas: int, policy: str = POLICY, multi_step: bool = True
) -> tuple[SimResult, float]:
    """The result and the CPU seconds ``Simulator.run`` took."""
    simulator = Simulator(
        build_fleet(fleet_of(replicas)), build_policy(policy), SimConfig(multi_step=multi_step)
    )
    started = time.process_time()
    result = simulator.run(scaled_specs(trace, RATE_PER_REPLICA * replicas))
    return result, time.process_time() - started


def measure(
    trace: list[TraceRequest], replicas: int, policy: str = POLICY, multi_step: bool = True, repeats: int = 1
) -> dict[str, Any]:
    """The fastest of ``repeats`` runs (other load on the machine only ever slows a run down)."""
    runs = [simulate_once(trace, replicas, policy, multi_step) for _ in range(repeats)]
    result, cpu_s = min(runs, key=lambda run: run[0].sim_wall_s)
    summary = result.summary()
    return {
        "replicas": replicas,
        "policy": policy,
        "multi_step": multi_step,
        "requests": len(trace),
        "completed": summary["completed"],
        "dropped": summary["dropped"],
        "sim_wall_s": round(result.sim_wall_s, 3),
        "requests_per_s": round(len(trace) / result.sim_wall_s, 1),
        "sim_cpu_s": round(cpu_s, 3),
        "requests_per_cpu_s": round(len(trace) / cpu_s, 1),
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
    "multi-step",
    "requests",
    "completed",
    "wall s",
    "requests/s",
    "CPU s",
    "requests/CPU s",
    "simulated s",
    "TTFT p99 s",
]


def _row(m: dict[str, Any]) -> list[Any]:
    return [m["replicas"], m["policy"], "yes" if m["multi_step"] else "no", m["requests"], m["completed"],
            m["sim_wall_s"], m["requests_per_s"], m["sim_cpu_s"], m["requests_per_cpu_s"], m["simulated_s"],
            m["ttft_p99_s"]]  # fmt: skip


def run(
    replica_counts: list[int], lengths: list[int], headline_requests: int, save: bool, profile: bool
) -> None:
    started = time.perf_counter()
    full = load_azure_csv(TRACES / "azure2023_conv.csv", limit=max([*lengths, headline_requests]))
    headline = [
        measure(full[:headline_requests], HEADLINE_REPLICAS, policy, multi_step, HEADLINE_REPEATS)
        for policy, multi_step in ((POLICY, True), ("sal", True), (POLICY, False))
    ]
    by_replicas = [measure(full[:headline_requests], n) for n in replica_counts]
    by_length = [measure(full[:n], HEADLINE_REPLICAS) for n in lengths]
    best, best_cpu = headline[0]["requests_per_s"], headline[0]["requests_per_cpu_s"]
    verdict = "meets" if best >= TARGET_REQUESTS_PER_S else "misses"
    cpu_verdict = "meets" if best_cpu >= TARGET_REQUESTS_PER_S else "misses"
    speedup = headline[2]["sim_cpu_s"] / headline[0]["sim_cpu_s"]
    body = (
        f"`{POLICY}` on `azure2023_conv`, arrivals at {RATE_PER_REPLICA:g}x the trace's rate per replica. "
        f"Headline (best of {HEADLINE_REPEATS} runs): {HEADLINE_REPLICAS} replicas, {headline_requests} "
        f"requests: **{best:,.0f} simulated "
        f"requests per wall second** ({verdict} the {TARGET_REQUESTS_PER_S:,.0f}/s target), "
        f"{best_cpu:,.0f} per CPU second ({cpu_verdict} it: wall time on a shared machine includes "
        "waiting for a core); `sal` (a policy that scores every replica on every request) for comparison, "
        f"and the same run stepping one plan per event (`multi_step=False`, identical results): multi-step "
        f"decode runs make it {speedup:.1f}x faster in CPU time.\n\n"
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
