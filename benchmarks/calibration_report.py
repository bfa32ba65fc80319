"""Markdown report of benchmarks/calibration.py (tables plus the assumptions behind them)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from benchmarks.calibration_data import MAX_FIT_TOKENS, host_bound_reason
from benchmarks.common import markdown_table
from replica_agent.executors.gpu_profiles import GPU_PROFILES

Rows = Mapping[str, Sequence[Mapping[str, object]]]
Consts = Mapping[str, Mapping[str, float]]
DENSE_TABLE_TOKENS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)

GPU_NOTES: Mapping[str, str] = MappingProxyType(
    {
        "a100-80gb": "calibrated: Vidur dense ops (Llama-2-7B, Llama-3-8B), attention rows, vLLM e2e",
        "h100-80gb": "calibrated: Vidur dense ops (Llama-2-7B), vLLM e2e; attention from the A100 fit",
        "a40-48gb": "calibrated: Vidur dense ops (Llama-2-7B); attention from the A100 fit; no e2e data",
        "a100-40gb": "a100-80gb fractions at its own 1,555 GB/s; checked against one vLLM point",
        "v100-32gb": "spec-sheet extrapolation (A100 fractions, HBM2); no measured data",
        "l4-24gb": "spec-sheet extrapolation (A40 fractions, GDDR6); no measured data",
    }
)

NOTES = f"""
## Assumptions and misses

- **Calibrated vs extrapolated.** a100-80gb, h100-80gb and a40-48gb are fitted to measured data.
  a100-40gb uses the a100-80gb fractions at its own bandwidth (one vLLM point checks it).
  **v100-32gb and l4-24gb are spec-sheet extrapolations** with borrowed fractions (A100's for the
  HBM2 V100, A40's for the GDDR6 L4): no measured data exists for them, so treat their numbers as
  estimates.
- **Dense part (a).** Sum of the medians of the nine per-layer ops of Vidur's `mlp.csv` (TP=1), x32
  layers; rows duplicated in the CSV (num_tokens 2048, 4096, ...) are averaged. The fit uses every
  row up to {MAX_FIT_TOKENS} tokens (the Llama-3-8B rows beyond, up to 32768, are compared but not
  fitted); the table shows the listed token counts. The model is a smooth roofline
  `(mem^p + compute^p)^(1/p)`: a sharp `max` underestimates the knee (N = 96-256) by up to ~25%,
  where GEMM tile/wave quantisation keeps kernels slower than either bound; the smooth form stays
  within -20%..+20% there (the A100 measurements jump by ~40% between 128 and 136 tokens).
  The H100 bandwidth fraction sits on the fit's upper bound (0.9): left free, the fit trades it
  against the layer floor (1.0 and 59 us), equally well.
- **Attention (b).** Only A100 rows exist (Llama-2-7B: FlashAttention; Llama-3-8B: FlashInfer). The
  model (floor + per-(sequence x KV head) cost + KV bytes at the achievable bandwidth; prefill:
  causal FLOPs + per-(token x head) cost + one read of the cached context) is fitted to both. The
  misses are kernels under ~80 us whose launch floor differs by backend (FlashInfer decode ~20 us
  vs FlashAttention ~9 us), rows that are non-monotone in the source (Llama-3 prefill of 64 tokens
  on 512 cached is slower than on 2048) and one outlier (Llama-2 decode batch 8 at 2112 cached:
  0.220 ms, against 0.108 at batch 4 and 0.250 at batch 12). All are below 1 ms per 32-layer step.
  Other GPUs reuse the A100 fractions and floor; per-unit costs scale with 1 / bandwidth.
- **End to end (c)** uses the closed-form serving model in `benchmarks/calibration_e2e.py`.
  LambdaLabs (vLLM 0.6.0, 10 ShareGPT prompts at once): 137 prompt tokens each (1369/10) and the
  mean output (1945/10, 1867/10), all prefilled in one step (1369 <= 2048 batched tokens); TPOT is the
  README's ITL/10 (multi-step scheduling streams ~10 tokens per chunk). yobitel "chatbot-short" (vLLM
  0.21.0): lengths are not published; assumed 256 prompt / 256 output tokens (the sensitivity table
  shows other guesses), staggered closed loop, 1.5 decode steps of wait for a new arrival (async
  scheduling: the rest of the running step plus the one already scheduled). johnmusgrave
  A100-40GB: 1024 in / 128 out; only C=1 has a TPOT number (C=8: "about the same"), throughputs 75
  and 495 tok/s. Throughputs include client-side gaps between requests, which the model omits.
- **Step overhead** is fitted on the GPU-bound TPOT points only and comes out at 0: Vidur's
  per-kernel timings already contain the launch gaps that vLLM's CUDA graphs and asynchronous
  scheduling hide, so host overhead is inside the dense-layer fit.
- **Host-bound points.** yobitel C=16 and C=64: {host_bound_reason()}. They are reported, not fitted,
  and miss by design.
- **TTFT of the LambdaLabs burst** is ~20-25 ms above the modelled GPU work on both GPUs (A100
  -18%, H100 -41%): vLLM 0.6.0's API server tokenises and admits the 10 requests one by one and the
  engine may start on the first arrivals before the rest are in. On the H100, where the prefill
  itself is short (37 ms), this fixed part pushes the point outside +-25%. It is not a GPU cost and
  is left out of the model (a per-request frontend latency belongs to the agent/simulator).
"""


def _pct(value: object) -> str:
    return f"{float(str(value)):+.1f}%"


def _ok(value: object) -> str:
    return "yes" if value else "**no**"


def _worst(rows: Sequence[Mapping[str, object]]) -> float:
    return max((abs(float(str(r["error_pct"]))) for r in rows), default=0.0)


def _rms_log(rows: Sequence[Mapping[str, object]]) -> float:
    logs = [math.log(float(str(r["modelled"])) / float(str(r["measured"]))) for r in rows]
    return math.sqrt(sum(x * x for x in logs) / len(logs)) if logs else 0.0


def summary(results: Rows, refit: Rows) -> str:
    rows = []
    for category in ("dense", "attention", "e2e", "e2e GPU-bound"):
        key = category.split()[0]
        shipped = [r for r in results[key] if category == key or not r["host_bound"]]
        again = [r for r in refit[key] if category == key or not r["host_bound"]]
        inside = sum(1 for r in shipped if r["within_25pct"])
        rows.append(
            [
                category,
                len(shipped),
                inside,
                f"{_worst(shipped):.1f}%",
                f"{_rms_log(shipped):.3f}",
                f"{_worst(again):.1f}%",
            ]
        )
    headers = [
        "category",
        "points",
        "within +-25%",
        "worst abs error",
        "rms log error",
        "worst abs error (refit)",
    ]
    return markdown_table(headers, rows)


def constants_table(shipped: Consts, refit: Consts) -> str:
    gpus = list(shipped)
    names = list(next(iter(shipped.values())))
    rows = [[name, *(f"{shipped[g][name]:.4g} / {refit[g][name]:.4g}" for g in gpus)] for name in names]
    return markdown_table(["parameter (shipped / refit)", *gpus], rows)


def profiles_table() -> str:
    rows = []
    for name, gpu in GPU_PROFILES.items():
        e = gpu.efficiency
        rows.append(
            [
                name,
                "yes" if gpu.calibrated else "no",
                f"{e.bandwidth_fraction:.3f}",
                f"{e.compute_fraction:.3f}",
                GPU_NOTES[name],
            ]
        )
    return markdown_table(
        ["GPU", "calibrated", "bandwidth fraction", "compute fraction", "constants from"], rows
    )


def dense_table(rows: Sequence[Mapping[str, object]]) -> str:
    shown = [r for r in rows if r["num_tokens"] in DENSE_TABLE_TOKENS]
    body = [
        [
            f"{r['gpu']} / {r['model']}",
            r["num_tokens"],
            f"{r['measured']:.2f}",
            f"{r['modelled']:.2f}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]),
        ]
        for r in shown
    ]
    return markdown_table(
        ["GPU / model", "tokens", "measured ms (32 layers)", "model ms", "error", "within +-25%"], body
    )


def attention_table(rows: Sequence[Mapping[str, object]]) -> str:
    body = [
        [
            r["model"],
            r["phase"],
            r["batch_size"],
            r["chunk"],
            r["kv"],
            f"{r['measured']:.3f}",
            f"{r['modelled']:.3f}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]),
        ]
        for r in rows
    ]
    headers = [
        "model (A100)",
        "phase",
        "batch",
        "chunk",
        "kv",
        "measured ms/layer",
        "model ms",
        "error",
        "within +-25%",
    ]
    return markdown_table(headers, body)


def e2e_table(rows: Sequence[Mapping[str, object]]) -> str:
    body = [
        [
            r["gpu"],
            r["concurrency"],
            f"{r['kind']} {r['prompt_tokens']}/{r['output_tokens']}",
            r["metric"],
            f"{r['measured']:.4g}",
            f"{r['modelled']:.4g}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]) + (" (host-bound)" if r["host_bound"] else ""),
            r["source"],
        ]
        for r in rows
    ]
    headers = [
        "GPU",
        "C",
        "scenario in/out",
        "metric",
        "measured",
        "model",
        "error",
        "within +-25%",
        "source",
    ]
    return markdown_table(headers, body)


def refit_code(refit: Consts) -> str:
    lines = []
    for gpu, values in refit.items():
        args = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        lines.append(f"# {gpu}\nGpuEfficiency({args})")
    return "```python\n" + "\n".join(lines) + "\n```"


def sensitivity_table(rows: Sequence[Mapping[str, object]]) -> str:
    body = [
        [
            r["concurrency"],
            r["metric"],
            f"{r['prompt']}/{r['output']}",
            f"{r['measured']:.4g}",
            f"{r['modelled']:.4g}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]),
        ]
        for r in rows
    ]
    return markdown_table(
        ["C", "metric", "assumed in/out", "measured", "model", "error", "within +-25%"], body
    )


def render(
    results: Rows, refit: Rows, shipped: Consts, refit_consts: Consts, spread: Sequence[Mapping[str, object]]
) -> str:
    sections = [
        "Shipped constants (`replica_agent/executors/gpu_profiles.py`) against every measured point; "
        "the refit column shows what a fresh fit from the CSVs gives.",
        "## Summary\n\n" + summary(results, refit),
        "## GPU profiles\n\n" + profiles_table(),
        "## Fitted constants\n\nAttention fields of h100/a40 are derived from the A100 fit.\n\n"
        + constants_table(shipped, refit_consts)
        + "\n\nRefit values, ready to paste into `gpu_profiles.py`:\n\n"
        + refit_code(refit_consts),
        "## (a) Dense part of 32 layers (Vidur mlp.csv, TP=1)\n\n" + dense_table(results["dense"]),
        "## (b) Attention kernel, one layer (Vidur attention excerpts, A100)\n\n"
        + attention_table(results["attention"]),
        "## (c) vLLM end to end (e2e/vllm_llama3_8b_e2e_summary.csv)\n\n" + e2e_table(results["e2e"]),
        "### Sensitivity to the assumed yobitel lengths (GPU-bound points)\n\n" + sensitivity_table(spread),
        NOTES.strip(),
    ]
    return "\n\n".join(sections)
