"""KV waste: allocated-but-unused token slots under paging vs reserving max_model_len per request.

Measured over every step of a replay of the Azure conversation trace on one a100-80gb replica:
waste = (slots allocated to running requests - slots holding a computed token) / slots allocated,
summed over steps (a time-weighted average by step).
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import TRACES, markdown_table, write_results
from replica_agent.engine import Engine, StepPlan
from replica_agent.engine.replay import replay
from replica_agent.sim_replica import build_sim_replica
from router.sim.traces import load_azure_csv, to_specs

GPU, MODEL = "a100-80gb", "llama-3.1-8b"


class WasteMeter:
    def __init__(self, max_model_len: int) -> None:
        self.max_model_len = max_model_len
        self.paged_allocated = 0
        self.used = 0
        self.reserved_allocated = 0
        self.reserved_exact_allocated = 0

    def __call__(self, engine: Engine, plan: StepPlan, now: float) -> None:
        running = engine.scheduler.running
        block_size = engine.config.block_size
        self.paged_allocated += sum(len(s.block_ids) for s in running) * block_size
        self.used += sum(s.num_computed_tokens for s in running)
        self.reserved_allocated += len(running) * self.max_model_len
        self.reserved_exact_allocated += sum(s.num_prompt_tokens + s.spec.params.max_tokens for s in running)

    def waste(self, allocated: int) -> float:
        return (allocated - self.used) / allocated if allocated else 0.0


def run(requests: int, max_model_len: int, save: bool = True) -> None:
    started = time.perf_counter()
    trace = load_azure_csv(TRACES / "azure2023_conv.csv", limit=requests)
    replica = build_sim_replica(GPU, MODEL, max_model_len=max_model_len, enable_prefix_caching=False)
    meter = WasteMeter(max_model_len)
    replay(replica.engine, replica.executor.execute, to_specs(trace), on_step=meter)
    rows = [
        ["paged, 16-token blocks (fleetroute)", meter.waste(meter.paged_allocated)],
        [f"reserve max_model_len ({max_model_len}) per request", meter.waste(meter.reserved_allocated)],
        ["reserve prompt + max_tokens per request", meter.waste(meter.reserved_exact_allocated)],
    ]
    body = (
        f"First {requests} requests of `azure2023_conv.csv` on one `{GPU}` replica (`{MODEL}`), prefix "
        "caching off so every slot belongs to one request. Waste = unused / allocated token slots of "
        "running requests, summed over all steps. The reservation rows count what the same running "
        "set would have held under contiguous per-request reservation.\n\n"
        + markdown_table(
            ["allocation", "wasted fraction of allocated KV slots"], [[n, f"{w:.2%}"] for n, w in rows]
        )
    )
    data = {name: waste for name, waste in rows}
    write_results("kv_waste", "KV-cache waste: paging vs reservation", body, data, started, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run(300 if args.quick else args.requests, args.max_model_len, save=not args.quick)


if __name__ == "__main__":
    main()
