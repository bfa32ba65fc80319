"""Policy comparison in the simulator: every routing policy (and the simulation-only ``oracle``) on
``azure2023_conv`` and ``mooncake_conversation``, on the ``hetero8`` and ``homo8`` fleets, at loads
0.5-1.1 of each fleet's saturation point (``router/sim/load.py``: the sum of each replica's own
saturated rate on the trace's requests).

Each run replays the first N requests of the trace with its arrivals rescaled to the load; runs are
spread over worker processes. Per (trace, fleet) the full report with plots is written under
``benchmarks/results/sim_policies/<trace>-<fleet>/``; the summary here checks the targets at load
0.9 on ``hetero8``: ``sal`` TTFT p99 at most 0.5x ``round_robin`` and 0.8x the best of the other
published policies, and goodput within 15% of ``oracle``.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from benchmarks.common import RESULTS, markdown_table, write_results
from router.sim.fleet import load_fleet
from router.sim.load import find_saturation
from router.sim.markdown import write_report
from router.sim.policies import sim_policy_names
from router.sim.report import RequestRecord
from router.sim.runner import simulate
from router.sim.simulator import SimConfig
from router.sim.sources import load_trace

TRACES = {"azure2023_conv": 1000, "mooncake_conversation": 500}
FLEETS = ("hetero8", "homo8")
LOADS = (0.5, 0.7, 0.9, 1.1)
HEADLINE_LOAD = 0.9
HEADLINE_FLEET = "hetero8"
PUBLISHED = ("gie_default", "dynamo_cost", "prefix", "llumnix", "lmetric", "least_request")
SLO_TTFT_S, SLO_TPOT_S = 2.0, 0.1
SEED = 0


@dataclass(frozen=True, slots=True)
class Job:
    trace: str
    requests: int
    fleet: str
    policy: str
    load: float
    rate_scale: float


def run_job(job: Job) -> tuple[Job, dict[str, Any], list[RequestRecord]]:
    trace = load_trace(job.trace, job.requests, SEED)
    result = simulate(
        trace, load_fleet(job.fleet), job.policy, SimConfig(seed=SEED), rate_scale=job.rate_scale
    )
    summary = {"policy": job.policy, "load_scale": job.load, **result.summary(SLO_TTFT_S, SLO_TPOT_S)}
    summary["policy"] = job.policy
    summary.pop("sim_wall_s")  # keeps the saved results free of timings
    return job, summary, list(result.records)


def saturation_rows(
    traces: dict[str, int], fleets: tuple[str, ...]
) -> tuple[dict[tuple[str, str], float], list[list[Any]]]:
    scales: dict[tuple[str, str], float] = {}
    rows: list[list[Any]] = []
    for trace_name, requests in traces.items():
        trace = load_trace(trace_name, requests, SEED)
        for fleet_name in fleets:
            saturation = find_saturation(trace, load_fleet(fleet_name), requests, SimConfig(seed=SEED))
            scales[trace_name, fleet_name] = saturation.rate_scale
            kinds = ", ".join(f"{k} {v:.3g}" for k, v in saturation.per_replica_rps.items())
            rows.append([trace_name, fleet_name, saturation.capacity_rps, saturation.rate_scale, kinds])
    return scales, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="100 requests, two loads, a few policies; saves nothing"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    started = time.perf_counter()
    traces = {name: 100 for name in TRACES} if args.quick else dict(TRACES)
    loads = (0.5, 0.9) if args.quick else LOADS
    policies = (
        ("round_robin", "least_request", "prefix", "sal", "oracle") if args.quick else sim_policy_names()
    )
    scales, saturation_table = saturation_rows(traces, FLEETS)
    jobs = [
        Job(trace, requests, fleet, policy, load, load * scales[trace, fleet])
        for trace, requests in traces.items()
        for fleet in FLEETS
        for load in loads
        for policy in policies
    ]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    records: dict[tuple[str, str], dict[tuple[str, float], list[RequestRecord]]] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for job, summary, job_records in pool.map(run_job, jobs):
            results.setdefault((job.trace, job.fleet), []).append(summary)
            records.setdefault((job.trace, job.fleet), {})[job.policy, job.load] = job_records
    if not args.quick:
        for (trace, fleet), summaries in results.items():
            title = f"{trace} on {fleet}, {traces[trace]} requests"
            write_report(
                summaries, records[trace, fleet], RESULTS / "sim_policies" / f"{trace}-{fleet}", title
            )
    body = report(traces, loads, saturation_table, results)
    data = {"saturation": saturation_table, "runs": {f"{t}/{f}": rows for (t, f), rows in results.items()}}
    write_results(
        "sim_policies", "Routing policies in the simulator", body, data, started, save=not args.quick
    )


def report(
    traces: dict[str, int],
    loads: tuple[float, ...],
    saturation_table: list[list[Any]],
    results: dict[tuple[str, str], list[dict[str, Any]]],
) -> str:
    parts = [
        f"Requests per run: {', '.join(f'{n} of `{t}`' for t, n in traces.items())}; SLOs for goodput: "
        f"TTFT ≤ {SLO_TTFT_S:g} s and TPOT ≤ {SLO_TPOT_S:g} s; seed {SEED}. Load 1.0 is the fleet's "
        "saturation rate, the sum of each replica's rate when saturated by a burst of the same requests:",
        "",
        markdown_table(
            ["trace", "fleet", "saturation req/s", "x trace's own rate", "per replica req/s"],
            saturation_table,
        ),
    ]
    parts += ["", *targets(results)]
    for (trace, fleet), summaries in results.items():
        parts += ["", f"## `{trace}` on `{fleet}`", "", "TTFT p99 (s) by load:", ""]
        policies = list(dict.fromkeys(str(s["policy"]) for s in summaries))
        by_key = {(s["policy"], s["load_scale"]): s for s in summaries}
        rows = [[p, *(by_key[p, load]["ttft_p99"] for load in loads)] for p in policies]
        parts.append(markdown_table(["policy", *(f"load {load:g}" for load in loads)], rows))
        headline = HEADLINE_LOAD if HEADLINE_LOAD in loads else loads[-1]
        columns = [
            "ttft_p50",
            "ttft_p99",
            "tpot_p99",
            "e2e_p99",
            "goodput",
            "throughput_tok_s",
            "prefix_hit_frac",
        ]
        columns += ["preemptions", "imbalance", "energy_j_per_token"]
        parts += ["", f"At load {headline:g}:", ""]
        rows = [[p, *(by_key[p, headline][c] for c in columns)] for p in policies]
        parts.append(markdown_table(["policy", *columns], rows))
        parts.append(f"\nPlots: [sim_policies/{trace}-{fleet}/](sim_policies/{trace}-{fleet}/report.md)")
    return "\n".join(parts)


def targets(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """The headline checks, per trace, at load 0.9 on hetero8."""
    lines = ["## Targets at load 0.9 on hetero8", ""]
    rows: list[list[Any]] = []
    for (trace, fleet), summaries in results.items():
        by_key = {(s["policy"], s["load_scale"]): s for s in summaries}
        if fleet != HEADLINE_FLEET or ("sal", HEADLINE_LOAD) not in by_key:
            continue
        sal = by_key["sal", HEADLINE_LOAD]
        published = [by_key[p, HEADLINE_LOAD] for p in PUBLISHED if (p, HEADLINE_LOAD) in by_key]
        if ("round_robin", HEADLINE_LOAD) in by_key:
            ratio = sal["ttft_p99"] / by_key["round_robin", HEADLINE_LOAD]["ttft_p99"]
            rows.append([trace, "sal TTFT p99 / round_robin's", "≤ 0.5", ratio, _verdict(ratio <= 0.5)])
        if published:
            best = min(published, key=lambda s: s["ttft_p99"])
            ratio = sal["ttft_p99"] / best["ttft_p99"]
            rows.append(
                [
                    trace,
                    f"sal TTFT p99 / best published ({best['policy']})",
                    "≤ 0.8",
                    ratio,
                    _verdict(ratio <= 0.8),
                ]
            )
        if ("oracle", HEADLINE_LOAD) in by_key:
            oracle = by_key["oracle", HEADLINE_LOAD]["goodput"]
            gap = (oracle - sal["goodput"]) / oracle if oracle else 0.0
            rows.append(
                [trace, "goodput shortfall of sal vs oracle", "≤ 15%", f"{gap:+.1%}", _verdict(gap <= 0.15)]
            )
    return [*lines, markdown_table(["trace", "check", "target", "measured", "met"], rows)]


def _verdict(met: bool) -> str:
    return "yes" if met else "**no**"


if __name__ == "__main__":
    main()
