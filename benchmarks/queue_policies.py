"""Engine queue policies at high load: memory_aware vs fcfs (preemptions, TTFT), and
predicted_sjf with true output lengths as the prediction vs fcfs (mean latency).

One replica with a tight KV cache (a100-40gb serving llama-3.1-8b) replays the Azure conversation
trace compressed in time, so the queue builds and memory runs out.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import TRACES, markdown_table, summarise, write_results
from replica_agent.engine.replay import replay
from replica_agent.sim_replica import build_sim_replica
from router.sim.traces import load_azure_csv, to_specs

GPU, MODEL = "a100-40gb", "llama-3.1-8b"
POLICIES = ("fcfs", "memory_aware", "predicted_sjf")


def run(requests: int, rate_multiplier: float, save: bool = True) -> None:
    started = time.perf_counter()
    trace = load_azure_csv(TRACES / "azure2023_conv.csv", limit=requests)
    rows, data = [], []
    for policy in POLICIES:
        replica = build_sim_replica(GPU, MODEL, queue_policy=policy, max_model_len=16384)
        specs = to_specs(trace, time_scale=1 / rate_multiplier, with_prediction=True)
        s = summarise(replay(replica.engine, replica.executor.execute, specs))
        rows.append(
            [
                policy,
                int(s["preemptions"]),
                s["ttft_p50_s"],
                s["ttft_p99_s"],
                s["ttft_mean_s"],
                s["e2e_mean_s"],
                s["e2e_p99_s"],
                s["throughput_tok_s"],
            ]
        )
        data.append({"policy": policy, **s})
    body = (
        f"First {requests} requests of `azure2023_conv.csv` at {rate_multiplier:g}x the trace's arrival "
        f"rate on one `{GPU}` replica (`{MODEL}`). `memory_aware` and `predicted_sjf` are given the "
        "true output length as their prediction (an upper bound on what a predictor can give).\n\n"
        + markdown_table(
            [
                "queue policy",
                "preemptions",
                "TTFT p50 s",
                "TTFT p99 s",
                "TTFT mean s",
                "E2E mean s",
                "E2E p99 s",
                "output tok/s",
            ],
            rows,
        )
    )
    write_results("queue_policies", "Queue policies at high load", body, data, started, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rate-multiplier", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run(300 if args.quick else args.requests, args.rate_multiplier, save=not args.quick)


if __name__ == "__main__":
    main()
