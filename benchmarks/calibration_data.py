"""Measured data for ``benchmarks/calibration.py``: Vidur per-operator timings and vLLM e2e points.

Everything read from ``shared/data/gpu_profiles`` (see its README). Times are converted to seconds.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

# The nine per-layer ops of Vidur's mlp.csv (``emb`` is once per iteration and excluded).
LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
# (our GPU profile, our model profile, Vidur directory)
DENSE_SERIES = (
    ("a100-80gb", "llama-2-7b", "vidur/a100/Llama-2-7b-hf"),
    ("a100-80gb", "llama-3.1-8b", "vidur/a100/Meta-Llama-3-8B"),
    ("h100-80gb", "llama-2-7b", "vidur/h100/Llama-2-7b-hf"),
    ("a40-48gb", "llama-2-7b", "vidur/a40/Llama-2-7b-hf"),
)
ATTENTION_SERIES = (
    ("a100-80gb", "llama-2-7b", "vidur/a100/Llama-2-7b-hf"),
    ("a100-80gb", "llama-3.1-8b", "vidur/a100/Meta-Llama-3-8B"),
)
MAX_FIT_TOKENS = 8192  # the serving range (max_num_batched_tokens); Llama-3-8B rows go to 32768


@dataclass(frozen=True)
class DenseRow:
    gpu: str
    model: str
    num_tokens: int
    layer_s: float  # sum of the nine per-layer op medians, one layer (mean over duplicate rows)


@dataclass(frozen=True)
class AttentionRow:
    gpu: str
    model: str
    phase: str
    batch_size: int
    chunk: int
    kv: int
    layer_s: float


@dataclass(frozen=True)
class Scenario:
    """How a vLLM benchmark ran, replayed through the engine by ``calibration_e2e.run_scenario``.

    ``concurrency`` clients each send their next request the moment the previous one finishes, all
    starting at t=0, until ``num_requests`` were sent (``benchmark_serving --max-concurrency``;
    with ``num_requests == concurrency`` it is one burst). Request ``i`` has
    ``prompt_tokens[i % len(prompt_tokens)]`` random (never shared) prompt tokens and exactly
    ``output_tokens`` outputs (``ignore_eos``); with ``length_spread`` f > 0 both lengths are
    instead drawn uniformly from [(1 - f) L, (1 + f) L] (seeded), as in a chat data set, which keeps
    the clients from staying in lock-step. The rest is the server's vLLM configuration.
    """

    concurrency: int
    prompt_tokens: tuple[int, ...]
    output_tokens: int
    num_requests: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool = True
    max_model_len: int = 8192
    length_spread: float = 0.0
    # Front-end latency per request when the stack differs from the one the library models
    # (None: the cost model's request_overhead_s, fitted to current vLLM).
    request_overhead_s: float | None = None
    host_bound: bool = False  # the server saturates on the host, outside a GPU model's scope
    note: str = ""

    @property
    def label(self) -> str:
        prompts = self.prompt_tokens
        shown = (
            str(prompts[0]) if len(prompts) == 1 else f"{min(prompts)}-{max(prompts)} (sum {sum(prompts)})"
        )
        spread = f" (+-{self.length_spread:.0%})" if self.length_spread else ""
        return f"{self.num_requests} req, in {shown} / out {self.output_tokens}{spread}"


@dataclass(frozen=True)
class E2ePoint:
    gpu: str
    model: str
    metric: str  # ttft_ms | tpot_ms | output_tok_s
    measured: float
    scenario: Scenario
    source: str


def load_dense(data_dir: Path) -> list[DenseRow]:
    rows: list[DenseRow] = []
    for gpu, model, directory in DENSE_SERIES:
        sums: dict[int, list[float]] = defaultdict(list)
        with (data_dir / directory / "mlp.csv").open(newline="") as handle:
            for record in csv.DictReader(handle):
                if record["num_tensor_parallel_workers"] != "1":
                    continue
                ms = sum(float(record[f"time_stats.{op}.median"]) for op in LAYER_OPS)
                sums[int(record["num_tokens"])].append(ms * 1e-3)
        rows += [DenseRow(gpu, model, n, float(f"{sum(v) / len(v):.6g}")) for n, v in sorted(sums.items())]
    return rows


def load_attention(data_dir: Path) -> list[AttentionRow]:
    rows: list[AttentionRow] = []
    for gpu, model, directory in ATTENTION_SERIES:
        with (data_dir / directory / "attention_excerpt.csv").open(newline="") as handle:
            for r in csv.DictReader(handle):
                batch, chunk, kv = int(r["batch_size"]), int(r["prefill_chunk_size"]), int(r["kv_cache_size"])
                rows.append(
                    AttentionRow(gpu, model, r["phase"], batch, chunk, kv, float(r["median_ms"]) * 1e-3)
                )
    return rows


_E2E_GPUS: Mapping[str, str] = MappingProxyType(
    {
        "A100-SXM4-80GB": "a100-80gb",
        "H100-SXM5-80GB": "h100-80gb",
        "H100-80GB-HBM3": "h100-80gb",
        "A100-40GB": "a100-40gb",
    }
)
_HOST_BOUND = (
    "aggregate output stays at ~1.3-1.4k tok/s from C=16 to C=64 (4x the streams) while the GPU "
    "model's batch-64 decode step is ~10 ms (~6k tok/s): that server is host-bound (API server / "
    "detokenisation / streaming / client), a property of that deployment and not of the H100"
)


# LambdaLabs: 10 ShareGPT prompts, 1369 prompt tokens in total, 4 to 399 each (the CSV); the exact
# lengths are not published, so a spread with those bounds and that sum.
LAMBDA_PROMPTS = (4, 20, 45, 80, 110, 140, 170, 200, 201, 399)
YOBITEL_LENGTHS = (256, 256)  # "chatbot-short": not published; assumed (see the sensitivity table)
# vLLM 0.6.0's front end (LambdaLabs): fitted by benchmarks/calibration.py to those two TTFT points
# only (it prints the refit); the library's request_overhead_s is fitted to the current-vLLM points.
VLLM_060_REQUEST_OVERHEAD_S = 22.6e-3
YOBITEL_SPREAD = 0.5  # chat prompts and answers vary in length; assumed +-50% uniform


def _scenario(row: dict[str, str]) -> Scenario:
    """Scenario assumptions per CSV row; the reasoning is in benchmarks/results/calibration.md."""
    concurrency = int(row["concurrency"])
    if row["source"].startswith("LambdaLabs"):
        # vLLM 0.6.0, max_model_len 2048 (``_len2048``): no chunked prefill, 2048 batched tokens.
        # All 10 requests at once; each gets the mean output (1945/10, 1867/10).
        total_out = int(row["output_tokens"].split()[0])
        return Scenario(
            concurrency,
            LAMBDA_PROMPTS,
            round(total_out / concurrency),
            concurrency,
            max_num_batched_tokens=2048,
            enable_chunked_prefill=False,
            max_model_len=2048,
            request_overhead_s=VLLM_060_REQUEST_OVERHEAD_S,
            note="vLLM 0.6.0",
        )
    if "yobitel" in row["source"]:
        # vLLM 0.21.0 (V1): chunked prefill, 8192 batched tokens on a >= 70 GiB GPU.
        prompt, output = YOBITEL_LENGTHS
        return Scenario(
            concurrency,
            (prompt,),
            output,
            max(8 * concurrency, 24),
            max_num_batched_tokens=8192,
            length_spread=YOBITEL_SPREAD,
            host_bound=concurrency >= 16,
            note="vLLM 0.21.0",
        )
    # vLLM 0.23.0 on an A100-40GB (< 70 GiB): chunked prefill, 2048 batched tokens.
    return Scenario(
        concurrency,
        (int(row["input_tokens"]),),
        int(row["output_tokens"]),
        max(8 * concurrency, 16),
        max_num_batched_tokens=2048,
        note="vLLM 0.23.0",
    )


def _number(cell: str) -> float | None:
    match = re.match(r"\s*~?\s*([0-9]+(?:\.[0-9]+)?)", cell)
    return float(match.group(1)) if match else None


def load_e2e(data_dir: Path) -> list[E2ePoint]:
    points: list[E2ePoint] = []
    path = data_dir / "e2e" / "vllm_llama3_8b_e2e_summary.csv"
    with path.open(newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle), start=2):
            scenario = _scenario(row)
            source = f"e2e/{path.name} line {index} (C={scenario.concurrency}, {row['source'].split()[0]})"
            for metric, column in (
                ("ttft_ms", "median_ttft_ms"),
                ("tpot_ms", "median_tpot_ms"),
                ("output_tok_s", "output_tok_per_s"),
            ):
                value = _number(row[column])
                burst = scenario.num_requests == scenario.concurrency
                if value is None or (metric == "output_tok_s" and burst):
                    continue  # no number, or a burst's throughput (set by its unknown longest output)
                points.append(
                    E2ePoint(_E2E_GPUS[row["gpu"]], "llama-3.1-8b", metric, value, scenario, source)
                )
    return points


def host_bound_reason() -> str:
    return _HOST_BOUND
