"""Continuous vs static batching on the Azure 2023 conversation trace, one a100-80gb replica.

Both modes see the same arrivals (the first N requests of the trace, optionally compressed in time
to push past saturation) and the same cost-model GPU; only the batching rule differs.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import TRACES, markdown_table, write_results
from replica_agent.engine.replay import replay
from replica_agent.sim_replica import build_sim_replica
from router.sim.traces import load_azure_csv, to_specs

GPU, MODEL = "a100-80gb", "llama-3.1-8b"


def run(requests: int, time_scales: list[float], save: bool = True) -> None:
    started = time.perf_counter()
    trace = load_azure_csv(TRACES / "azure2023_conv.csv", limit=requests)
    rows, data = [], []
    for scale in time_scales:
        per_mode = {}
        for mode in ("continuous", "static"):
            replica = build_sim_replica(GPU, MODEL, batching=mode, max_model_len=16384)
            result = replay(replica.engine, replica.executor.execute, to_specs(trace, time_scale=scale))
            per_mode[mode] = result.summary()
        gain = per_mode["continuous"]["throughput_tok_s"] / per_mode["static"]["throughput_tok_s"]
        for mode, s in per_mode.items():
            rows.append(
                [
                    f"{1 / scale:g}x",
                    mode,
                    s["throughput_tok_s"],
                    s["ttft_p50_s"],
                    s["ttft_p99_s"],
                    s["e2e_p50_s"],
                    s["e2e_p99_s"],
                    f"{gain:.2f}x" if mode == "continuous" else "",
                ]
            )
            data.append({"arrival_rate_multiplier": 1 / scale, "mode": mode, **s})
    body = (
        f"First {requests} requests of `azure2023_conv.csv`, one `{GPU}` replica serving `{MODEL}` "
        "(cost-model GPU, virtual time). Rate multiplier 1x = the trace's own arrivals; higher "
        "multipliers compress inter-arrival times. Throughput = output tokens / makespan.\n\n"
        + markdown_table(
            [
                "arrival rate",
                "batching",
                "output tok/s",
                "TTFT p50 s",
                "TTFT p99 s",
                "E2E p50 s",
                "E2E p99 s",
                "throughput gain",
            ],
            rows,
        )
    )
    write_results("batching", "Continuous vs static batching", body, data, started, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rate-multipliers", default="1,4", help="comma-separated, e.g. 1,4")
    parser.add_argument("--quick", action="store_true", help="300 requests, for a smoke run")
    args = parser.parse_args()
    requests = 300 if args.quick else args.requests
    run(requests, [1 / float(m) for m in args.rate_multipliers.split(",")], save=not args.quick)


if __name__ == "__main__":
    main()
