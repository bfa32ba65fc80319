"""A simulation report on disk: ``report.md`` (a table per load), ``results.json`` and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from router.sim.plots import Summary, load_of, metric_vs_load_figure, ttft_cdf_figure
from router.sim.report import RequestRecord

RunKey = tuple[str, float]  # (policy, load scale)

TABLE_COLUMNS = (
    "completed",
    "dropped",
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "tpot_p50",
    "tpot_p99",
    "e2e_p50",
    "e2e_p99",
    "throughput_tok_s",
    "goodput",
    "preemptions",
    "prefix_hit_frac",
    "kv_util_mean",
    "imbalance",
    "energy_j_per_token",
)


def write_report(
    results: list[dict[str, float | int | str]],
    records_by_run: dict[RunKey, list[RequestRecord]] | None,
    out_dir: Path,
    title: str,
) -> list[Path]:
    """Write the report of ``results`` (one summary per policy and load, with ``policy`` and
    ``load_scale``) into ``out_dir``; TTFT CDFs need ``records_by_run``. Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    if records_by_run:
        for load in sorted({load for _, load in records_by_run}):
            by_policy = {policy: records for (policy, at), records in records_by_run.items() if at == load}
            name = f"ttft_cdf_load_{_load_label(load)}.png"
            figures.append(ttft_cdf_figure(by_policy, out_dir / name, f"{title}: TTFT CDF, load {load:g}"))
    figures.append(
        metric_vs_load_figure(
            results, "ttft_p99", "TTFT p99 (s)", out_dir / "ttft_p99_vs_load.png", f"{title}: TTFT p99", True
        )
    )
    figures.append(
        metric_vs_load_figure(
            results, "goodput", "goodput (fraction)", out_dir / "goodput_vs_load.png", f"{title}: goodput"
        )
    )
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps([_json_safe(r) for r in results], indent=2) + "\n")
    report_path = out_dir / "report.md"
    report_path.write_text(report_markdown(results, title, [f.name for f in figures]))
    return [report_path, results_path, *figures]


def report_markdown(results: Sequence[Summary], title: str, figure_names: Sequence[str] = ()) -> str:
    """A heading, one table per load (every policy's key metrics), then the figures."""
    lines = [f"# {title}", ""]
    for load in sorted({load_of(r) for r in results}):
        rows = [r for r in results if load_of(r) == load]
        columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
        lines += [f"## Load {load:g}", "", "| policy | " + " | ".join(columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for row in rows:
            cells = [_cell(row.get(column, "")) for column in columns]
            lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
        lines.append("")
    if figure_names:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figure_names] + [""]
    lines.append("Seconds for latencies; goodput is the fraction of requests meeting both SLOs.")
    return "\n".join(lines) + "\n"


def _cell(value: float | int | str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _load_label(load: float) -> str:
    return f"{load:g}".replace(".", "p")


def _json_safe(summary: Mapping[str, float | int | str]) -> dict[str, float | int | str | None]:
    """Non-finite floats become null, so the file is strict JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}
