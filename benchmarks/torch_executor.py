"""Torch executor on CPU: continuous batching through the real engine vs one request at a time.

The same TinyLlama (random weights) and the same requests run twice through Engine + TorchExecutor:
once with ``max_num_seqs`` large enough for every request (continuous batching, chunked prefill),
once with ``max_num_seqs=1``. All requests arrive at t=0; times are wall-clock, scheduling included.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import markdown_table, write_results  # noqa: E402
from replica_agent.engine import Engine, EngineConfig, RequestSpec, SamplingParams  # noqa: E402
from replica_agent.executors.torch_model import TinyLlamaConfig  # noqa: E402
from replica_agent.executors.torch_runner import TorchExecutor  # noqa: E402

BLOCK_SIZE = 16


@dataclass(frozen=True)
class Workload:
    requests: int
    min_prompt: int
    max_prompt: int
    output_tokens: int
    max_num_batched_tokens: int
    threads: int
    model: TinyLlamaConfig


def workloads(quick: bool, threads: int) -> Workload:
    if quick:
        model = TinyLlamaConfig(
            vocab_size=1024, hidden_size=256, num_layers=4, num_heads=4, head_dim=64, ffn_size=688
        )
        return Workload(8, 32, 96, 16, 256, threads, model)
    model = TinyLlamaConfig(
        vocab_size=4096,
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        ffn_size=1376,
    )
    return Workload(32, 64, 256, 64, 512, threads, model)


def make_specs(work: Workload, seed: int = 0) -> list[RequestSpec]:
    rng = random.Random(seed)
    params = SamplingParams(max_tokens=work.output_tokens, ignore_eos=True)
    specs = []
    for i in range(work.requests):
        length = rng.randint(work.min_prompt, work.max_prompt)
        prompt = tuple(rng.randrange(work.model.vocab_size) for _ in range(length))
        specs.append(RequestSpec(f"r{i}", prompt, arrival_time=0.0, params=params))
    return specs


def make_engine(executor: TorchExecutor, work: Workload, max_num_seqs: int) -> Engine:
    config = EngineConfig(
        num_blocks=executor.cache.num_blocks,
        block_size=BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=work.max_num_batched_tokens,
        max_model_len=work.max_prompt + work.output_tokens + 1,
    )
    return Engine(config)


def run_mode(
    executor: TorchExecutor, specs: list[RequestSpec], work: Workload, max_num_seqs: int
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Serve every request to completion; wall-clock metrics and each request's output tokens."""
    engine = make_engine(executor, work, max_num_seqs)
    for spec in specs:
        engine.add(spec)
    outputs: dict[str, list[int]] = {s.request_id: [] for s in specs}
    first: dict[str, float] = {}
    finish: dict[str, float] = {}
    forward_s, steps, decode_rows = 0.0, 0, 0
    start = time.perf_counter()
    while engine.has_unfinished():
        plan = engine.schedule(time.perf_counter() - start)
        if plan is None:
            raise RuntimeError("engine stalled with unfinished requests")
        result = executor.execute(plan)
        forward_s += result.duration_s
        steps += 1
        decode_rows += plan.num_decode_tokens
        now = time.perf_counter() - start
        for out in engine.update(plan, result, now):
            outputs[out.request_id].extend(out.new_token_ids)
            first.setdefault(out.request_id, now)
            if out.finished:
                finish[out.request_id] = now
    wall = time.perf_counter() - start
    generated = sum(len(tokens) for tokens in outputs.values())
    prompt = sum(len(s.prompt_token_ids) for s in specs)
    tpot = [(finish[r] - first[r]) / (len(outputs[r]) - 1) for r in outputs if len(outputs[r]) > 1]
    metrics = {
        "wall_s": wall,
        "forward_s": forward_s,
        "steps": float(steps),
        "output_tok_s": generated / wall,
        "total_tok_s": (generated + prompt) / wall,
        "ttft_mean_s": float(np.mean(list(first.values()))),
        "tpot_mean_ms": 1000 * float(np.mean(tpot)),
        "preemptions": float(engine.scheduler.num_preemptions),
        "mean_decode_batch": decode_rows / steps,
    }
    return metrics, outputs


def report(
    work: Workload, results: dict[str, dict[str, float]], same: int, started: float, save: bool
) -> None:
    batched, single = results["continuous"], results["one at a time"]
    keys = ("output_tok_s", "total_tok_s", "wall_s", "ttft_mean_s", "tpot_mean_ms", "mean_decode_batch")
    rows = [[mode, *(m[k] for k in keys), int(m["steps"])] for mode, m in results.items()]
    model = work.model
    body = (
        f"{work.requests} requests, prompts uniform in [{work.min_prompt}, {work.max_prompt}] tokens, "
        f"{work.output_tokens} output tokens each (ignore_eos), all arriving at t=0. Model: TinyLlama "
        f"hidden {model.hidden_size}, {model.num_layers} layers, {model.num_heads} heads / "
        f"{model.num_kv_heads} KV heads, head_dim {model.head_dim}, ffn {model.ffn_size}, vocab "
        f"{model.vocab_size}, float32, random weights. Block size {BLOCK_SIZE}, max_num_batched_tokens "
        f"{work.max_num_batched_tokens}; `torch.set_num_threads({torch.get_num_threads()})` on a machine "
        f"with {os.cpu_count()} CPUs. Wall-clock, engine scheduling included.\n\n"
        + markdown_table(
            [
                "mode",
                "output tok/s",
                "prompt+output tok/s",
                "wall s",
                "mean TTFT s",
                "mean TPOT ms",
                "mean decode batch",
                "steps",
            ],
            rows,
        )
        + f"\n\nContinuous batching speedup (output tok/s): "
        f"**{batched['output_tok_s'] / single['output_tok_s']:.2f}x**. "
        f"Greedy outputs identical across the two modes for {same}/{work.requests} requests "
        "(batched and unbatched float32 matmuls round differently, which can flip a near-tie argmax).\n"
    )
    data: dict[str, Any] = {"workload": asdict(work), "results": results, "identical_outputs": same}
    title = "Torch executor: continuous batching on CPU"
    if save:
        write_results("torch_executor", title, body, data, started)
    else:
        print(f"# {title} (--quick: not saved)\n\n{body}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and 8 requests, a few seconds; results not saved"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = parser.parse_args()
    started = time.perf_counter()
    work = workloads(args.quick, args.threads)
    specs = make_specs(work)
    per_request = -(-(work.max_prompt + work.output_tokens) // BLOCK_SIZE)
    executor = TorchExecutor(
        work.model, num_blocks=work.requests * per_request, block_size=BLOCK_SIZE, num_threads=work.threads
    )
    run_mode(executor, specs[:2], work, max_num_seqs=2)  # warm-up
    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, dict[str, list[int]]] = {}
    for mode, max_num_seqs in (("continuous", work.requests), ("one at a time", 1)):
        results[mode], outputs[mode] = run_mode(executor, specs, work, max_num_seqs)
        print(f"{mode}: {results[mode]['output_tok_s']:.0f} output tok/s", flush=True)
    same = sum(outputs["continuous"][s.request_id] == outputs["one at a time"][s.request_id] for s in specs)
    report(work, results, same, started, save=not args.quick)


if __name__ == "__main__":
    main()
