"""PNG figures of simulation results: TTFT CDFs per policy and metrics against load.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, no display needed);
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from router.sim.report import RequestRecord

Summary = Mapping[str, float | int | str]
LINE_STYLES = ("-", "--", "-.", ":")


def _style(index: int) -> tuple[tuple[float, float, float, float], str]:
    """A distinct (colour, dash) for each of up to 40 series: ten colours, then the next dash."""
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10), LINE_STYLES[(index // 10) % len(LINE_STYLES)]


def ttft_cdf_figure(records_by_policy: Mapping[str, Sequence[RequestRecord]], path: Path, title: str) -> Path:
    """One empirical CDF of TTFT per policy, on a log time axis when the spread is wide."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.5, 4.5))
    axes = figure.subplots()
    positive: list[float] = []
    for index, (policy, records) in enumerate(records_by_policy.items()):
        ttfts = sorted(r.ttft_s for r in records)
        if not ttfts:
            continue
        fractions = [(i + 1) / len(ttfts) for i in range(len(ttfts))]
        colour, dash = _style(index)
        axes.step(ttfts, fractions, where="post", label=policy, color=colour, linestyle=dash)
        positive += [t for t in ttfts if t > 0]
    if positive and max(positive) / min(positive) > 100:
        axes.set_xscale("log")
    axes.set_xlabel("TTFT (s)")
    axes.set_ylabel("fraction of requests")
    axes.set_ylim(0.0, 1.0)
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    if records_by_policy:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def metric_vs_load_figure(
    results: Sequence[Summary], metric: str, ylabel: str, path: Path, title: str, log_y: bool = False
) -> Path:
    """``metric`` against ``load_scale``, one line per policy (non-finite values are skipped)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.5, 4.5))
    axes = figure.subplots()
    for index, (policy, points) in enumerate(_series(results, metric).items()):
        loads, values = zip(*points, strict=True)
        colour, dash = _style(index)
        axes.plot(loads, values, marker="o", label=policy, color=colour, linestyle=dash)
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel("load scale")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    if results:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def load_of(summary: Summary) -> float:
    """A result's load scale (1.0 when it was run at the trace's own rate)."""
    value = summary.get("load_scale", 1.0)
    return float(value) if isinstance(value, int | float) else 1.0


def _series(results: Sequence[Summary], metric: str) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for summary in results:
        value = summary.get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            series.setdefault(str(summary["policy"]), []).append((load_of(summary), float(value)))
    return {policy: sorted(points) for policy, points in series.items()}
