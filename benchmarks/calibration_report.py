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
- **Attention (b).** Only A100 rows exist, and vLLM picked a different backend per model in Vidur's
  profiling: FlashInfer for Llama-3-8B, FlashAttention for Llama-2-7B. `ModelProfile.attention_backend`
  records that, and each backend has its own per-layer launch floor for its decode and its prefill
  kernel (FlashInfer's batch-decode kernel costs ~16-20 us however small the batch; FlashAttention's
  ~8 us; both prefill kernels ~1-4 us). A step pays the floor of each kind of kernel it launches.
  The rest (per-(sequence x KV head) cost, KV bytes at the achievable bandwidth; prefill: causal
  FLOPs + per-(token x head) cost + one read of the cached context) is shared. Remaining misses: the
  FlashInfer 64-token prefill rows, which are not monotone in the cached context in the source
  (11 us at 0, 45 us at 512 and at 1024, 46 us at 2048), the Llama-2 decode at 2112 cached (0.108
  ms at batch 4, 0.220 at batch 8, 0.250 at batch 12: batch 8 is an outlier, batch 4 sits at
  -25.0%), and one FlashInfer decode of 24 us. All are below 1.5 ms per 32-layer step.
  Other GPUs reuse the A100 fractions and floors; per-unit costs scale with 1 / bandwidth.
- **End to end (c)** replays each benchmark through the real engine and the cost-model executor
  (`benchmarks/calibration_e2e.py`): C closed-loop clients, all starting at t=0, each sending its
  next request when the last one finishes; TTFT = first token - send, TPOT = (e2e - TTFT) /
  (output - 1), medians over requests; output throughput = output tokens / duration (what
  `benchmark_serving` reports). Engine settings follow the vLLM version: LambdaLabs (vLLM 0.6.0,
  max_model_len 2048) without chunked prefill and 2048 batched tokens; yobitel (0.21.0) and
  johnmusgrave (0.23.0) with chunked prefill and 8192 (H100, >= 70 GiB) / 2048 (A100-40GB) batched
  tokens. LambdaLabs: 10 ShareGPT prompts at once, 1369 prompt tokens in 4-399 each; the lengths
  are not published, so `(4, 20, 45, 80, 110, 140, 170, 200, 201, 399)` (sum 1369); each request
  gets the mean output (1945/10, 1867/10, `ignore_eos`); TPOT is the README's ITL/10 (multi-step
  scheduling streams ~10 tokens per chunk). yobitel "chatbot-short": lengths not published; assumed
  256 / 256 with a +-50% uniform spread (chat data varies; with identical lengths the clients stay
  in lock-step and every new prompt is prefilled together with the others), 8 requests per client
  (see the sensitivity table). johnmusgrave A100-40GB: 1024 in / 128 out (random data set, fixed
  lengths), 8 requests per client; only C=1 has a TPOT number (C=8: "about the same").
- **Host overheads.** `step_overhead_s` (per step, shared) still fits to ~0: Vidur's per-kernel
  timings already contain the launch gaps that vLLM's CUDA graphs and asynchronous scheduling hide.
  `request_overhead_s` (shared, ~2.5 ms) is the current vLLM front end's fixed latency per request
  (HTTP, tokenisation, hand-off to the engine core, streaming the first token back), fitted to the
  yobitel TTFTs. It is exposed as `StepCostModel.request_overhead_s`; the engine does not add it:
  the driver delays each request's arrival at the engine by it (so it lands in TTFT and e2e latency,
  and in a closed loop in the gap between a client's requests), and a simulator should do the same.
- **vLLM 0.6.0's front end** costs ~23 ms per request in the LambdaLabs burst: the measured TTFT is
  22.7 ms above the modelled GPU work on the A100 and 25.2 ms above it on the H100, whose prefill is
  2.8x shorter, so it is a fixed host latency, not GPU work (its pre-V1 API server tokenises and
  admits the 10 requests serially, and multi-step scheduling delays output processing). It is fitted
  on those two TTFT points only and kept in the benchmark (`VLLM_060_REQUEST_OVERHEAD_S` in
  `calibration_data.py`, set per scenario), not in the library, whose front end is current vLLM.
- **Host-bound points.** yobitel C=16 and C=64: {host_bound_reason()}. They are reported, marked
  host-bound and not fitted. The host-bound check shows why: with a host cost of 0.74 ms per
  sequence per step overlapping the GPU (a front end that emits ~1.35k tokens/s), the engine replay
  reproduces 5 of their 6 numbers within +-25% (C=16 TTFT stays -41%). That cap is not shipped:
  it would hold every simulated H100 to ~1.35k output tokens/s whatever the deployment.
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


CATEGORIES = ("dense", "attention", "e2e (all)", "e2e GPU-bound")


def _category_rows(results: Rows, category: str) -> list[Mapping[str, object]]:
    key = category.split()[0]
    return [r for r in results[key] if category != "e2e GPU-bound" or not r["host_bound"]]


def summary_rows(results: Rows, refit: Rows) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for category in CATEGORIES:
        shipped, again = _category_rows(results, category), _category_rows(refit, category)
        out.append(
            {
                "category": category,
                "points": len(shipped),
                "within_25pct": sum(1 for r in shipped if r["within_25pct"]),
                "worst_abs_error_pct": round(_worst(shipped), 1),
                "rms_log_error": round(_rms_log(shipped), 3),
                "within_25pct_refit": sum(1 for r in again if r["within_25pct"]),
            }
        )
    return out


def summary(results: Rows, refit: Rows) -> str:
    rows = [
        [
            r["category"],
            r["points"],
            r["within_25pct"],
            f"{r['worst_abs_error_pct']:.1f}%",
            f"{r['rms_log_error']:.3f}",
            r["within_25pct_refit"],
        ]
        for r in summary_rows(results, refit)
    ]
    headers = ["category", "points", "within +-25%", "worst abs error", "rms log error", "within (refit)"]
    return markdown_table(headers, rows)


def misses(results: Rows) -> str:
    """Every point outside +-25%, with the reason (see the notes below for the evidence)."""
    lines = []
    for r in results["attention"]:
        if not r["within_25pct"]:
            lines.append(
                f"- attention {r['model']} {r['phase']} batch {r['batch_size']} chunk {r['chunk']} "
                f"kv {r['kv']}: {float(str(r['measured'])) * 1e3:.0f} us measured, "
                f"{_pct(r['error_pct'])}: {_attention_reason(r)}"
            )
    for r in results["e2e"]:
        if not r["within_25pct"]:
            why = (
                "host-bound (not a GPU-model target; see the host-bound check)"
                if r["host_bound"]
                else "see notes"
            )
            lines.append(
                f"- e2e {r['gpu']} C={r['concurrency']} {r['metric']}: {r['measured']} measured, "
                f"{_pct(r['error_pct'])}: {why}"
            )
    return "\n".join(lines) if lines else "None."


def _attention_reason(r: Mapping[str, object]) -> str:
    if r["model"] == "llama-3.1-8b" and r["phase"] == "prefill":
        return (
            "FlashInfer 64-token prefill rows are not monotone in the cached context in the source "
            "(11 us at 0, 45 us at 512 and 1024, 46 us at 2048): no linear-in-context model fits both ends"
        )
    if r["model"] == "llama-2-7b" and r["batch_size"] in (4, 8) and r["kv"] == 2112:
        return (
            "outlier in the source: decode at 2112 cached is 0.108 ms at batch 4 and 0.220 ms at batch 8 "
            "but 0.250 ms at batch 12 (per-sequence cost 27 us, then 7.5 us)"
        )
    return "kernel under 50 us: launch-floor noise (below 2 ms per 32-layer step)"


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
    body = [
        [
            f"{r['gpu']} / {r['model']}",
            r["num_tokens"],
            f"{r['measured']:.2f}",
            f"{r['modelled']:.2f}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]),
        ]
        for r in rows
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
            r["scenario"],
            r["note"],
            r["metric"],
            f"{r['measured']:.4g}",
            f"{r['modelled']:.4g}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]) + (" (host-bound)" if r["host_bound"] else ""),
            f"{r['request_overhead_ms']:.3g}",
            r["source"],
        ]
        for r in rows
    ]
    headers = [
        "GPU",
        "C",
        "engine run",
        "stack",
        "metric",
        "measured",
        "model (engine)",
        "error",
        "within +-25%",
        "front end ms",
        "source",
    ]
    return markdown_table(headers, body)


def host_table(rows: Sequence[Mapping[str, object]]) -> str:
    body = [
        [
            r["concurrency"],
            r["metric"],
            f"{r['host_seq_ms']:.3g}",
            f"{r['measured']:.4g}",
            f"{r['modelled']:.4g}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]),
        ]
        for r in rows
    ]
    return markdown_table(
        ["C", "metric", "host ms / seq / step", "measured", "model", "error", "within +-25%"], body
    )


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
            f"{r['prompt']}/{r['output']} +-{float(str(r['spread'])):.0%}",
            f"{r['measured']:.4g}",
            f"{r['modelled']:.4g}",
            _pct(r["error_pct"]),
            _ok(r["within_25pct"]),
        ]
        for r in rows
    ]
    return markdown_table(
        ["C", "metric", "assumed in/out, spread", "measured", "model", "error", "within +-25%"], body
    )


def render(
    results: Rows,
    refit: Rows,
    shipped: Consts,
    refit_consts: Consts,
    spread: Sequence[Mapping[str, object]],
    host: Sequence[Mapping[str, object]],
    vllm060: Mapping[str, float],
) -> str:
    dense_rows = [r for r in results["dense"] if r["num_tokens"] in DENSE_TABLE_TOKENS]
    sections = [
        "Shipped constants (`replica_agent/executors/gpu_profiles.py`) against every measured point; "
        "the refit column shows what a fresh fit from the CSVs gives. End-to-end numbers come from "
        "replaying each vLLM benchmark through the real engine (`benchmarks/calibration_e2e.py`).",
        "## Summary\n\n" + summary(results, refit),
        "### Points outside +-25%\n\n" + misses(results),
        "## GPU profiles\n\n" + profiles_table(),
        "## Fitted constants\n\nAttention fields of h100/a40 are derived from the A100 fit; "
        "step and request overheads are shared by all GPUs. vLLM 0.6.0's front-end overhead "
        f"(benchmark-only, LambdaLabs rows): shipped {vllm060['shipped'] * 1e3:.3g} ms, "
        f"refit {vllm060['refit'] * 1e3:.3g} ms.\n\n"
        + constants_table(shipped, refit_consts)
        + "\n\nRefit values, ready to paste into `gpu_profiles.py`:\n\n"
        + refit_code(refit_consts),
        "## (a) Dense part of 32 layers (Vidur mlp.csv, TP=1)\n\n"
        + f"All rows are compared (summary above); shown: num_tokens in {DENSE_TABLE_TOKENS}.\n\n"
        + dense_table(dense_rows),
        "## (b) Attention kernel, one layer (Vidur attention excerpts, A100)\n\n"
        + attention_table(results["attention"]),
        "## (c) vLLM end to end (e2e/vllm_llama3_8b_e2e_summary.csv), engine replay\n\n"
        + e2e_table(results["e2e"]),
        "### Host-bound check (diagnostic, not shipped)\n\n"
        + "The yobitel C=16 / C=64 points replayed with a host cost per sequence per step that "
        + "overlaps the GPU (step = max(GPU, host x sequences)), set to 1 / their mean output rate:\n\n"
        + host_table(host),
        "### Sensitivity to the assumed yobitel lengths (GPU-bound points)\n\n" + sensitivity_table(spread),
        NOTES.strip(),
    ]
    return "\n\n".join(sections)
