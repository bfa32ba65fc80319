"""Sensitivity to output-length prediction error: ``sal`` and ``predicted_cost`` in the simulator with
the predictor ``noisy:<rel_err>`` (every request's true length times a lognormal(0, rel_err) error,
fixed per request by the seed) for rel_err 0 ... 1, against the production default (``none``: a
running average of finished requests' lengths).

Runs ``azure2023_conv`` and ``mooncake_conversation`` on ``hetero8`` at loads 0.9 and 1.1 of the
fleet's saturation point (see ``router/sim/load.py``). A rel_err of 1.0 means the predicted length
is off by a factor of e or more for a third of the requests.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from benchmarks.common import markdown_table, write_results
from router.sim.fleet import load_fleet
from router.sim.load import find_saturation
from router.sim.runner import simulate
from router.sim.simulator import SimConfig
from router.sim.sources import load_trace

TRACES = {"azure2023_conv": 1000, "mooncake_conversation": 500}
FLEET = "hetero8"
LOADS = (0.9, 1.1)
POLICIES = ("sal", "predicted_cost")
PREDICTORS = ("noisy:0", "noisy:0.25", "noisy:0.5", "noisy:0.75", "noisy:1", "none")
METRICS = ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "goodput")
SLO_TTFT_S, SLO_TPOT_S = 2.0, 0.1
SEED = 0


@dataclass(frozen=True, slots=True)
class Job:
    trace: str
    requests: int
    policy: str
    predictor: str
    load: float
    rate_scale: float


def run_job(job: Job) -> tuple[Job, dict[str, Any]]:
    trace = load_trace(job.trace, job.requests, SEED)
    result = simulate(
        trace,
        load_fleet(FLEET),
        job.policy,
        SimConfig(seed=SEED),
        rate_scale=job.rate_scale,
        predictor=job.predictor,
    )
    summary = result.summary(SLO_TTFT_S, SLO_TPOT_S)
    return job, {metric: summary[metric] for metric in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 requests, one load; saves nothing")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    started = time.perf_counter()
    traces = {name: 100 for name in TRACES} if args.quick else dict(TRACES)
    loads = LOADS[:1] if args.quick else LOADS
    jobs = []
    for trace_name, requests in traces.items():
        trace = load_trace(trace_name, requests, SEED)
        scale = find_saturation(trace, load_fleet(FLEET), requests, SimConfig(seed=SEED)).rate_scale
        jobs += [
            Job(trace_name, requests, policy, predictor, load, load * scale)
            for load in loads
            for policy in POLICIES
            for predictor in PREDICTORS
        ]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        outcomes = list(pool.map(run_job, jobs))
    parts = [
        f"Fleet `{FLEET}`; requests per run: {', '.join(f'{n} of `{t}`' for t, n in traces.items())}; "
        f"goodput SLOs TTFT ≤ {SLO_TTFT_S:g} s, TPOT ≤ {SLO_TPOT_S:g} s. `noisy:0` is the true length; "
        "`none` is the production running average.",
    ]
    data: list[dict[str, Any]] = []
    for trace_name in traces:
        for load in loads:
            for policy in POLICIES:
                rows = []
                for job, metrics in outcomes:
                    if (job.trace, job.load, job.policy) == (trace_name, load, policy):
                        rows.append([job.predictor, *(metrics[m] for m in METRICS)])
                        data.append(
                            {
                                "trace": trace_name,
                                "load": load,
                                "policy": policy,
                                "predictor": job.predictor,
                                **metrics,
                            }
                        )
                parts += ["", f"### `{policy}`, `{trace_name}`, load {load:g}", ""]
                parts.append(markdown_table(["predictor", *METRICS], rows))
    body = "\n".join(parts)
    write_results(
        "sim_sensitivity", "Sensitivity to prediction error", body, data, started, save=not args.quick
    )


if __name__ == "__main__":
    main()
