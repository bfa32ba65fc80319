"""Calibrate the GPU cost model against measured data, and report how well it fits.

    python benchmarks/calibration.py [--data-dir ../shared/data/gpu_profiles]

Refits every efficiency constant of ``replica_agent/executors/gpu_profiles.py`` from the CSVs
(scipy least squares on log error), prints the refit values next to the shipped ones, and compares
the *shipped* model with every measured point: (a) the dense part of a layer (Vidur mlp.csv), (b)
the attention kernel (Vidur attention excerpts, A100), (c) vLLM end-to-end TTFT / TPOT / throughput
through a closed-form serving model. Results: ``benchmarks/results/calibration.{md,json}``.
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
    AttentionRow,
    DenseRow,
    E2ePoint,
    load_attention,
    load_dense,
    load_e2e,
)
from benchmarks.calibration_e2e import e2e_model  # noqa: E402
from benchmarks.calibration_report import render  # noqa: E402
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
SENSITIVITY_LENGTHS = ((128, 128), (256, 256), (512, 256), (512, 512))
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
    """A100 attention kernels (both models): fractions, floor, per-head decode and prefill costs."""
    shapes = [attention_shape(r) for r in rows]

    def unpack(x: np.ndarray) -> Fits:
        a100 = replace(
            fits["a100-80gb"],
            attn_bandwidth_fraction=float(x[0]),
            attn_compute_fraction=float(x[1]),
            attn_floor_s=float(x[2]) * 1e-6,
            attn_decode_head_s=float(x[3]) * 1e-9,
            attn_prefill_head_token_s=float(x[4]) * 1e-9,
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
            [0.9, 0.3, 10.0, 30.0, 4.0],
            [0.3, 0.05, 0.0, 0.0, 0.0],
            [1.0, 1.0, 50.0, 1000.0, 1000.0],
        )
    )


def fit_step_overhead(points: Sequence[E2ePoint], fits: Fits) -> Fits:
    """One host overhead per step, shared by all GPUs, from the GPU-bound TPOT points."""
    used = [p for p in points if p.metric == "tpot_ms" and not p.scenario.host_bound]

    def unpack(x: np.ndarray) -> Fits:
        return {gpu: replace(fit, step_overhead_s=float(x[0]) * 1e-3) for gpu, fit in fits.items()}

    def residuals(x: np.ndarray) -> list[float]:
        profiles = _profiles(unpack(x))
        return [
            math.log(e2e_model(_model(profiles, p.gpu, p.model), p.scenario)[p.metric] / p.measured)
            for p in used
        ]

    return unpack(_solve(residuals, [0.3], [0.0], [5.0]))


def refit(dense: Sequence[DenseRow], attention: Sequence[AttentionRow], e2e: Sequence[E2ePoint]) -> Fits:
    fits: Fits = {"a100-80gb": A100_80GB_FIT, "h100-80gb": H100_80GB_FIT, "a40-48gb": A40_48GB_FIT}
    fits = fit_dense([r for r in dense if r.num_tokens <= MAX_FIT_TOKENS], fits)
    fits = fit_attention(attention, fits)
    return fit_step_overhead(e2e, fits)


def compare(
    dense: Sequence[DenseRow],
    attention: Sequence[AttentionRow],
    e2e: Sequence[E2ePoint],
    profiles: Mapping[str, GpuProfile],
) -> dict[str, list[dict[str, object]]]:
    """Measured vs modelled for every point, with the given (shipped) profiles."""
    out: dict[str, list[dict[str, object]]] = {"dense": [], "attention": [], "e2e": []}
    for d in dense:
        layers = get_model_profile(d.model).num_layers
        modelled = _model(profiles, d.gpu, d.model).dense_layer_seconds(d.num_tokens) * layers
        out["dense"].append(_point(asdict(d), d.layer_s * layers * 1e3, modelled * 1e3))
    for a in attention:
        modelled = _model(profiles, a.gpu, a.model).attention_layer_seconds(attention_shape(a))
        out["attention"].append(_point(asdict(a), a.layer_s * 1e3, modelled * 1e3))
    for p in e2e:
        modelled = e2e_model(_model(profiles, p.gpu, p.model), p.scenario)[p.metric]
        info = {"gpu": p.gpu, "model": p.model, "metric": p.metric, "source": p.source, **asdict(p.scenario)}
        out["e2e"].append(_point(info, p.measured, modelled))
    return out


def sensitivity(e2e: Sequence[E2ePoint], profiles: Mapping[str, GpuProfile]) -> list[dict[str, object]]:
    """Error of the GPU-bound yobitel points under other guesses of the unpublished lengths."""
    out: list[dict[str, object]] = []
    for p in e2e:
        if "yobitel" not in p.source or p.scenario.host_bound:
            continue
        for prompt, output in SENSITIVITY_LENGTHS:
            scenario = replace(p.scenario, prompt_tokens=prompt, output_tokens=output)
            modelled = e2e_model(_model(profiles, p.gpu, p.model), scenario)[p.metric]
            info = {
                "concurrency": scenario.concurrency,
                "metric": p.metric,
                "prompt": prompt,
                "output": output,
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=DATA / "gpu_profiles")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dense, attention, e2e = load_dense(args.data_dir), load_attention(args.data_dir), load_e2e(args.data_dir)
    fits = refit(dense, attention, e2e)
    shipped: Fits = {"a100-80gb": A100_80GB_FIT, "h100-80gb": H100_80GB_FIT, "a40-48gb": A40_48GB_FIT}
    results = compare(dense, attention, e2e, GPU_PROFILES)
    refit_results = compare(dense, attention, e2e, _profiles(fits))
    spread = sensitivity(e2e, GPU_PROFILES)
    body = render(results, refit_results, constants(shipped), constants(fits), spread)
    data = {"shipped_constants": constants(shipped), "refit_constants": constants(fits), **results}
    data["yobitel_length_sensitivity"] = spread
    write_results("calibration", "GPU cost model calibration", body, data, started)


if __name__ == "__main__":
    main()
