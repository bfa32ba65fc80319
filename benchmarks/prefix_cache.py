"""Prefix caching on the Mooncake conversation trace: prompt tokens served from the cache vs the
trace's own reusable-prefix ceiling (an infinite cache that keeps every block forever).

Mooncake's ``hash_ids`` are 512-token prefix blocks; they are mapped onto token content so the
engine's 16-token chained hashes see exactly the sharing the trace records.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import TRACES, markdown_table, summarise, write_results
from replica_agent.engine.replay import replay
from replica_agent.sim_replica import build_sim_replica
from router.sim.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest, load_mooncake_jsonl, to_specs

MODEL = "llama-3.1-8b"


def reusable_ceiling(trace: list[TraceRequest], block_size: int) -> float:
    """Fraction of prompt tokens an infinite cache could serve: leading 512-token blocks seen
    before, limited to whole engine blocks and never the prompt's last token."""
    seen: set[int] = set()
    reusable = total = 0
    for request in trace:
        leading = 0
        for block_id in request.prefix_ids:
            if block_id not in seen:
                break
            leading += 1
        limit = (request.prompt_tokens - 1) // block_size * block_size
        reusable += min(leading * MOONCAKE_BLOCK_TOKENS, limit)
        total += request.prompt_tokens
        seen.update(request.prefix_ids)
    return reusable / total


def run(requests: int, gpus: list[str], time_scale: float) -> None:
    started = time.perf_counter()
    trace = load_mooncake_jsonl(TRACES / "mooncake_conversation_trace.jsonl", limit=requests)
    ceiling = reusable_ceiling(trace, 16)
    rows: list[list[object]] = []
    runs: list[dict[str, object]] = []
    data = {"ceiling": ceiling, "requests": requests, "time_scale": time_scale, "runs": runs}
    for gpu in gpus:
        replica = build_sim_replica(gpu, MODEL, max_model_len=131072, max_num_batched_tokens=8192)
        result = replay(replica.engine, replica.executor.execute, to_specs(trace, time_scale=time_scale))
        s = summarise(result)
        capacity = replica.engine.config.num_blocks * replica.engine.config.block_size
        rows.append(
            [
                gpu,
                f"{capacity:,}",
                f"{s['cached_prompt_frac']:.1%}",
                f"{ceiling:.1%}",
                f"{s['cached_prompt_frac'] / ceiling:.0%}",
                s["ttft_p50_s"],
            ]
        )
        runs.append({"gpu": gpu, "kv_capacity_tokens": capacity, **s})
    body = (
        f"First {requests} requests of `mooncake_conversation_trace.jsonl`, arrivals stretched "
        f"x{time_scale:g} so one replica keeps up; `{MODEL}`, 16-token blocks, LRU eviction.\n\n"
        + markdown_table(
            [
                "GPU",
                "KV capacity (tokens)",
                "prompt tokens from cache",
                "trace ceiling",
                "of ceiling",
                "TTFT p50 s",
            ],
            rows,
        )
    )
    write_results("prefix_cache", "Prefix caching vs the reusable-prefix ceiling", body, data, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--gpus", default="a100-80gb,a100-40gb")
    parser.add_argument("--time-scale", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run(200 if args.quick else args.requests, args.gpus.split(","), args.time_scale)


if __name__ == "__main__":
    main()
