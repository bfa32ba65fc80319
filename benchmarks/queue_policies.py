"""Engine queue policies at high load: memory_aware vs fcfs (preemptions, TTFT), and
predicted_sjf with true output lengths as the prediction vs fcfs (mean latency).

Two workloads, each past one replica's saturation so the queue builds and memory runs out:
the Azure 2023 conversation trace (long prompts, short answers) compressed in time on an
a100-40gb, and ServeGen DeepSeek-R1 reasoning lengths (long, bimodal answers) with Poisson
arrivals on an a100-80gb.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import TRACES, markdown_table, write_results
from replica_agent.engine.replay import replay
from replica_agent.sim_replica import build_sim_replica
from router.sim.traces import TraceRequest, load_azure_csv, sample_servegen, to_specs

MODEL = "llama-3.1-8b"
POLICIES = ("fcfs", "memory_aware", "predicted_sjf")


def workloads(quick: bool) -> list[tuple[str, str, list[TraceRequest], float]]:
    azure_requests, servegen_requests = (300, 150) if quick else (1500, 600)
    azure = load_azure_csv(TRACES / "azure2023_conv.csv", limit=azure_requests)
    servegen = sample_servegen(TRACES / "servegen_deepseek_r1", servegen_requests, rate_per_s=2.5, seed=0)
    return [
        (f"azure2023_conv, first {azure_requests}, 2x rate", "a100-40gb", azure, 0.5),
        (f"servegen_deepseek_r1, {servegen_requests} at 2.5 req/s", "a100-80gb", servegen, 1.0),
    ]


def run(quick: bool, save: bool = True) -> None:
    started = time.perf_counter()
    rows: list[list[object]] = []
    data: list[dict[str, object]] = []
    for label, gpu, trace, time_scale in workloads(quick):
        for policy in POLICIES:
            replica = build_sim_replica(gpu, MODEL, queue_policy=policy, max_model_len=32768)
            specs = to_specs(trace, time_scale=time_scale, with_prediction=True)
            s = replay(replica.engine, replica.executor.execute, specs).summary()
            rows.append(
                [
                    label,
                    gpu,
                    policy,
                    int(s["preemptions"]),
                    s["ttft_p50_s"],
                    s["ttft_mean_s"],
                    s["ttft_p99_s"],
                    s["e2e_mean_s"],
                    s["e2e_p99_s"],
                    s["throughput_tok_s"],
                ]
            )
            data.append({"workload": label, "gpu": gpu, "policy": policy, **s})
    body = (
        f"`{MODEL}`, one replica per workload, virtual time. `memory_aware` and `predicted_sjf` are "
        "given the true output length as their prediction (the best any predictor can do).\n\n"
        + markdown_table(
            [
                "workload",
                "GPU",
                "queue policy",
                "preemptions",
                "TTFT p50 s",
                "TTFT mean s",
                "TTFT p99 s",
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
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run(args.quick, save=not args.quick)


if __name__ == "__main__":
    main()
