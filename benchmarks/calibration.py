"""Calibrate the GPU cost model against measured data, and report how well it fits.

    python benchmarks/calibration.py [--data-dir ../shared/data/gpu_profiles]

Refits every efficiency constant of ``replica_agent/executors/gpu_profiles.py`` from the CSVs
(scipy least squares on log error), prints the refit values next to the shipped ones, and compares
the *shipped* model with every measured point: (a) the dense part of a layer (Vidur mlp.csv), (b)
the attention kernel (Vidur attention excerpts, A100), (c) vLLM end-to-end TTFT / TPOT / throughput
replayed through the real engine (``calibration_e2e.run_scenario``).
Results: ``benchmarks/results/calibration.{md,json}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.calibration_data import (  # noqa: E402
    MAX_FIT_TOKENS,
    VLLM_060_REQUEST_OVERHEAD_S,
    AttentionRow,
    DenseRow,
    E2ePoint,
    Scenario,
    load_attention,
    load_dense,
    load_e2e,
)
from benchmarks.calibration_e2e import run_scenario  # noqa: E402
from benchmarks.calibration_report import DENSE_TABLE_TOKENS, render, summary_rows  # noqa: E402
from benchmarks.common import DATA, write_results  # noqa: E402
from replica_agent.engine.step import BatchShape, SeqShape  # noqa: E402
from replica_agent.executors.cost_model import StepCostModel  # noqa: E402
from replica_agent.executors.gpu_profiles import (  # noqa: E402
    A40_48GB_FIT,
    A100_80GB_FIT,
    GPU_PROFILES,
    H100_80GB_FIT,
    GpuEfficiency,
    GpuProfile,
    get_model_profile,
    make_gpu_profiles,
)

CALIBRATED = ("a100-80gb", "h100-80gb", "a40-48gb")
SENSITIVITY_LENGTHS = (  # (prompt, output, spread)
    (128, 128, 0.5),
    (256, 256, 0.0),
    (256, 256, 0.5),
    (512, 256, 0.5),
    (512, 512, 0.5),
)
Fits = dict[str, GpuEfficiency]


def _model(profiles: Mapping[str, GpuProfile], gpu: str, model: str) -> StepCostModel:
    return StepCostModel(profiles[gpu], get_model_profile(model))


def _profiles(fits: Fits) -> Mapping[str, GpuProfile]:
    return make_gpu_profiles(fits["a100-80gb"], fits["h100-80gb"], fits["a40-48gb"])


def attention_shape(row: AttentionRow) -> BatchShape:
    if row.phase == "decode":
        return BatchShape((SeqShape(1, row.kv),) * row.batch_size)
    return BatchShape((SeqShape(row.chunk, row.kv),))


def _solve(
    residuals: Callable[[np.ndarray], list[float]], x0: list[float], lo: list[float], hi: list[float]
) -> np.ndarray:
    return np.asarray(least_squares(lambda x: residuals(x), x0, bounds=(lo, hi)).x)


def fit_dense(rows: Sequence[DenseRow], fits: Fits) -> Fits:
    """Per calibrated GPU: bandwidth / compute fractions and layer floor; one roofline exponent.
    Each (GPU, model) series weighs the same whatever its number of rows."""
    series = sorted({(r.gpu, r.model) for r in rows})
    counts = {key: sum(1 for r in rows if (r.gpu, r.model) == key) for key in series}

    def unpack(x: np.ndarray) -> Fits:
        return {
            gpu: replace(
                fits[gpu],
                bandwidth_fraction=float(x[3 * i]),
                compute_fraction=float(x[3 * i + 1]),
                layer_floor_s=float(x[3 * i + 2]) * 1e-6,
                roofline_exponent=float(x[-1]),
            )
            for i, gpu in enumerate(CALIBRATED)
        }

    def residuals(x: np.ndarray) -> list[float]:
        profiles = _profiles(unpack(x))
        models = {key: _model(profiles, *key) for key in series}
        return [
            math.log(models[r.gpu, r.model].dense_layer_seconds(r.num_tokens) / r.layer_s)
            / math.sqrt(counts[r.gpu, r.model])
            for r in rows
        ]

    x = _solve(
        residuals, [0.75, 0.7, 20.0] * 3 + [2.0], [0.3, 0.3, 0.0] * 3 + [1.0], [0.9, 0.9, 100.0] * 3 + [8.0]
    )
    return unpack(x)


def fit_attention(rows: Sequence[AttentionRow], fits: Fits) -> Fits:
    """A100 attention kernels (both models): fractions, per-head decode and prefill costs, and the
    decode / prefill launch floors of each backend (FlashAttention rows: Llama-2-7B; FlashInfer
    rows: Llama-3-8B)."""
    shapes = [attention_shape(r) for r in rows]

    def unpack(x: np.ndarray) -> Fits:
        a100 = replace(
            fits["a100-80gb"],
            attn_bandwidth_fraction=float(x[0]),
            attn_compute_fraction=float(x[1]),
            attn_decode_head_s=float(x[2]) * 1e-9,
            attn_prefill_head_token_s=float(x[3]) * 1e-9,
            attn_decode_floor_s=float(x[4]) * 1e-6,
            attn_prefill_floor_s=float(x[5]) * 1e-6,
            flashinfer_decode_floor_s=float(x[6]) * 1e-6,
            flashinfer_prefill_floor_s=float(x[7]) * 1e-6,
        )
        return {**fits, "a100-80gb": a100}

    def residuals(x: np.ndarray) -> list[float]:
        profiles = _profiles(unpack(x))
        models = {m: _model(profiles, "a100-80gb", m) for m in {r.model for r in rows}}
        return [
            math.log(models[r.model].attention_layer_seconds(s) / r.layer_s)
            for r, s in zip(rows, shapes, strict=True)
        ]

    return unpack(
        _solve(
            residuals,
            [0.9, 0.3, 30.0, 4.0, 10.0, 10.0, 10.0, 10.0],
            [0.3, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1000.0, 1000.0, 50.0, 50.0, 50.0, 50.0],
        )
    )


E2eFit = tuple[Fits, float]  # fits plus vLLM 0.6.0's front-end overhead (benchmark-only)


def _run(
    profiles: Mapping[str, GpuProfile],
    p: E2ePoint,
    vllm060_overhead_s: float,
    cache: dict[tuple[str, Scenario], dict[str, float]],
    scenario: Scenario | None = None,
) -> float:
    s = scenario or p.scenario
    if (p.gpu, s) not in cache:
        override = vllm060_overhead_s if s.request_overhead_s is not None else None
        cache[p.gpu, s] = run_scenario(
            p.gpu, p.model, s, request_overhead_s=override, cost=_model(profiles, p.gpu, p.model)
        )
    return cache[p.gpu, s][p.metric]


def fit_host_overheads(points: Sequence[E2ePoint], fits: Fits) -> E2eFit:
    """Host costs shared by all GPUs, from the GPU-bound vLLM points replayed through the engine:
    the per-step overhead, the current front end's per-request overhead, and vLLM 0.6.0's (only
    the LambdaLabs TTFT points see it)."""
    used = [p for p in points if not p.scenario.host_bound]

    def unpack(x: np.ndarray) -> E2eFit:
        step, request = float(x[0]) * 1e-3, float(x[1]) * 1e-3
        new = {g: replace(f, step_overhead_s=step, request_overhead_s=request) for g, f in fits.items()}
        return new, float(x[2]) * 1e-3

    def residuals(x: np.ndarray) -> list[float]:
        new, legacy = unpack(x)
        profiles = _profiles(new)
        cache: dict[tuple[str, Scenario], dict[str, float]] = {}
        return [math.log(_run(profiles, p, legacy, cache) / p.measured) for p in used]

    x = least_squares(
        residuals, [0.1, 3.0, 20.0], bounds=([0.0, 0.0, 0.0], [5.0, 50.0, 100.0]), diff_step=0.05
    ).x
    return unpack(np.asarray(x))


def refit(dense: Sequence[DenseRow], attention: Sequence[AttentionRow], e2e: Sequence[E2ePoint]) -> E2eFit:
    fits: Fits = {"a100-80gb": A100_80GB_FIT, "h100-80gb": H100_80GB_FIT, "a40-48gb": A40_48GB_FIT}
    fits = fit_dense([r for r in dense if r.num_tokens <= MAX_FIT_TOKENS], fits)
    fits = fit_attention(attention, fits)
    return fit_host_overheads(e2e, fits)


def compare(
    dense: Sequence[DenseRow],
    attention: Sequence[AttentionRow],
    e2e: Sequence[E2ePoint],
    profiles: Mapping[str, GpuProfile],
    vllm060_overhead_s: float,
) -> dict[str, list[dict[str, object]]]:
    """Measured vs modelled for every point, with the given profiles; e2e through the engine."""
    out: dict[str, list[dict[str, object]]] = {"dense": [], "attention": [], "e2e": []}
    for d in dense:
        layers = get_model_profile(d.model).num_layers
        modelled = _model(profiles, d.gpu, d.model).dense_layer_seconds(d.num_tokens) * layers
        out["dense"].append(_point(asdict(d), d.layer_s * layers * 1e3, modelled * 1e3))
    for a in attention:
        modelled = _model(profiles, a.gpu, a.model).attention_layer_seconds(attention_shape(a))
        out["attention"].append(_point(asdict(a), a.layer_s * 1e3, modelled * 1e3))
    cache: dict[tuple[str, Scenario], dict[str, float]] = {}
    for p in e2e:
        modelled = _run(profiles, p, vllm060_overhead_s, cache)
        overhead = p.scenario.request_overhead_s
        if overhead is not None:
            overhead = vllm060_overhead_s
        else:
            overhead = profiles[p.gpu].efficiency.request_overhead_s
        info = {
            "gpu": p.gpu,
            "model": p.model,
            "metric": p.metric,
            "source": p.source,
            "scenario": p.scenario.label,
            "concurrency": p.scenario.concurrency,
            "host_bound": p.scenario.host_bound,
            "request_overhead_ms": _round(overhead * 1e3),
            "note": p.scenario.note,
        }
        out["e2e"].append(_point(info, p.measured, modelled))
    return out


def host_bound_check(e2e: Sequence[E2ePoint], profiles: Mapping[str, GpuProfile]) -> list[dict[str, object]]:
    """The host-bound points replayed with a front end capped at their measured output rate:
    a host cost per sequence per step, overlapped with the GPU (diagnostic, not shipped)."""
    bound = [p for p in e2e if p.scenario.host_bound]
    rates = [p.measured for p in bound if p.metric == "output_tok_s"]
    if not rates:
        return []
    host_seq_s = len(rates) / sum(rates)
    out: list[dict[str, object]] = []
    cache: dict[Scenario, dict[str, float]] = {}
    for p in bound:
        if p.scenario not in cache:
            cost = _model(profiles, p.gpu, p.model)
            cache[p.scenario] = run_scenario(p.gpu, p.model, p.scenario, host_seq_s=host_seq_s, cost=cost)
        info = {
            "concurrency": p.scenario.concurrency,
            "metric": p.metric,
            "host_seq_ms": _round(host_seq_s * 1e3),
        }
        out.append(_point(info, p.measured, cache[p.scenario][p.metric]))
    return out


def sensitivity(e2e: Sequence[E2ePoint], profiles: Mapping[str, GpuProfile]) -> list[dict[str, object]]:
    """Error of the GPU-bound yobitel points under other guesses of the unpublished lengths."""
    out: list[dict[str, object]] = []
    cache: dict[tuple[str, Scenario], dict[str, float]] = {}
    for p in e2e:
        if "yobitel" not in p.source or p.scenario.host_bound:
            continue
        for prompt, output, spread in SENSITIVITY_LENGTHS:
            scenario = replace(
                p.scenario, prompt_tokens=(prompt,), output_tokens=output, length_spread=spread
            )
            modelled = _run(profiles, p, 0.0, cache, scenario)
            info = {
                "concurrency": scenario.concurrency,
                "metric": p.metric,
                "prompt": prompt,
                "output": output,
                "spread": spread,
            }
            out.append(_point(info, p.measured, modelled))
    return out


def _point(info: Mapping[str, object], measured: float, modelled: float) -> dict[str, object]:
    error = modelled / measured - 1.0
    return {
        **info,
        "measured": _round(measured),
        "modelled": _round(modelled),
        "error_pct": _round(100 * error),
        "within_25pct": abs(error) <= 0.25,
    }


def _round(value: float) -> float:
    return float(f"{value:.5g}")


def constants(fits: Mapping[str, GpuEfficiency]) -> dict[str, dict[str, float]]:
    return {gpu: {k: float(v) for k, v in asdict(fit).items()} for gpu, fit in fits.items()}


def dense_summary(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per (GPU, model): count, within +-25%, worst error; plus the rows at DENSE_TABLE_TOKENS."""
    out: list[dict[str, object]] = []
    for key in sorted({(str(r["gpu"]), str(r["model"])) for r in rows}):
        series = [r for r in rows if (r["gpu"], r["model"]) == key]
        errors = [float(str(r["error_pct"])) for r in series]
        out.append(
            {
                "gpu": key[0],
                "model": key[1],
                "points": len(series),
                "within_25pct": sum(1 for r in series if r["within_25pct"]),
                "worst_error_pct": max(errors, key=abs),
                "rows": [r for r in series if r["num_tokens"] in DENSE_TABLE_TOKENS],
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=DATA / "gpu_profiles")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dense, attention, e2e = load_dense(args.data_dir), load_attention(args.data_dir), load_e2e(args.data_dir)
    fits, legacy = refit(dense, attention, e2e)
    shipped: Fits = {"a100-80gb": A100_80GB_FIT, "h100-80gb": H100_80GB_FIT, "a40-48gb": A40_48GB_FIT}
    results = compare(dense, attention, e2e, GPU_PROFILES, VLLM_060_REQUEST_OVERHEAD_S)
    refit_results = compare(dense, attention, e2e, _profiles(fits), legacy)
    spread = sensitivity(e2e, GPU_PROFILES)
    host = host_bound_check(e2e, GPU_PROFILES)
    overheads = {"shipped": VLLM_060_REQUEST_OVERHEAD_S, "refit": legacy}
    body = render(results, refit_results, constants(shipped), constants(fits), spread, host, overheads)
    data = {
        "summary": summary_rows(results, refit_results),
        "shipped_constants": constants(shipped),
        "refit_constants": constants(fits),
        "vllm_060_request_overhead_s": overheads,
        "dense_by_series": dense_summary(results["dense"]),
        "attention": results["attention"],
        "e2e": results["e2e"],
        "host_bound_check": host,
        "yobitel_length_sensitivity": spread,
    }
    write_results("calibration", "GPU cost model calibration", body, data, started)


if __name__ == "__main__":
    main()
