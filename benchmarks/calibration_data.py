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
from typing import Literal

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
    """How a vLLM benchmark ran, for the closed-form e2e model (see calibration.py)."""

    kind: Literal[
        "burst", "closed_loop"
    ]  # "burst": all requests arrive at once at an idle server; "closed_loop": staggered
    concurrency: int
    prompt_tokens: int
    output_tokens: int
    chunk_budget: int = 2048  # vLLM's max_num_batched_tokens
    host_bound: bool = False  # the server saturates on the host, outside a GPU model's scope
    note: str = ""


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
    "aggregate output stays at ~1.3-1.4k tok/s from C=16 to C=64 (4x the streams): the server is "
    "host-bound (API server / detokenisation / client), which a GPU cost model does not capture"
)


def _scenario(row: dict[str, str]) -> Scenario:
    """Scenario assumptions per CSV row; the reasoning is in benchmarks/results/calibration.md."""
    concurrency = int(row["concurrency"])
    if row["source"].startswith("LambdaLabs"):
        # 10 ShareGPT prompts sent at once: 1369 prompt tokens and ~1900 output tokens in total.
        total_out = int(row["output_tokens"].split()[0])
        return Scenario("burst", concurrency, 137, round(total_out / concurrency), note="vLLM 0.6.0")
    if "yobitel" in row["source"]:
        # "chatbot-short": lengths not published; assumed 256 in / 256 out, staggered closed loop.
        return Scenario(
            "closed_loop", concurrency, 256, 256, host_bound=concurrency >= 16, note="vLLM 0.21.0"
        )
    return Scenario(
        "closed_loop", concurrency, int(row["input_tokens"]), int(row["output_tokens"]), note="vLLM 0.23.0"
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
                if value is None or (metric == "output_tok_s" and scenario.kind == "burst"):
                    continue  # no number, or a burst's throughput (set by its unknown longest output)
                points.append(
                    E2ePoint(_E2E_GPUS[row["gpu"]], "llama-3.1-8b", metric, value, scenario, source)
                )
    return points


def host_bound_reason() -> str:
    return _HOST_BOUND
