from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from router.sim.markdown import report_markdown, write_report
from router.sim.report import ReplicaStats, RequestRecord, SimResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(index: int, ttft_s: float, output_tokens: int = 11) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{index}",
        arrival_s=float(index),
        replica_id="a100-80gb-0",
        ttft_s=ttft_s,
        e2e_s=ttft_s + 0.02 * (output_tokens - 1),
        prompt_tokens=100,
        cached_tokens=0,
        output_tokens=output_tokens,
        preemptions=0,
        finish_reason="length",
    )


def _result(policy: str, ttfts: list[float]) -> SimResult:
    replica = ReplicaStats(
        "a100-80gb-0", "a100-80gb", 1000, 0, 0.2, busy_s=1.0, busy_watts=400, idle_watts=100
    )
    records = tuple(_record(i, t) for i, t in enumerate(ttfts))
    return SimResult(policy, len(records), records, (), (replica,), sim_wall_s=0.01)


def _runs() -> tuple[list[dict[str, float | int | str]], dict[tuple[str, float], list[RequestRecord]]]:
    results: list[dict[str, float | int | str]] = []
    records: dict[tuple[str, float], list[RequestRecord]] = {}
    for load, slowdown in ((0.5, 1.0), (0.9, 3.0)):
        for policy, base in (("round_robin", 0.2), ("sal", 0.1)):
            result = _result(policy, [base * slowdown * (1 + i / 4) for i in range(5)])
            results.append({**result.summary(), "load_scale": load})
            records[policy, load] = list(result.records)
    return results, records


def test_energy_counts_busy_and_idle_power_over_the_makespan() -> None:
    result = _result("sal", [0.1, 0.1])
    span = result.makespan_s  # arrivals at 0 and 1, each lasting 0.1 + 0.2 s
    assert span == pytest.approx(1.3)
    expected = 1.0 * 400 + (span - 1.0) * 100
    assert result.replica_energy_j() == {"a100-80gb-0": pytest.approx(expected)}
    assert result.energy_by_gpu_j() == {"a100-80gb": pytest.approx(expected)}
    summary = result.summary()
    assert summary["energy_j_per_token"] == pytest.approx(expected / 22)
    assert summary["energy_j_a100-80gb"] == pytest.approx(expected)
    assert "ttft_p90" in summary


def test_energy_per_token_is_nan_without_output() -> None:
    assert math.isnan(SimResult("sal", 0, (), (), (), 0.0).energy_j_per_token)


def test_write_report_writes_markdown_json_and_png_plots(tmp_path: Path) -> None:
    results, records = _runs()
    written = write_report(results, records, tmp_path / "out", "Tiny fleet")
    names = {path.name for path in written}
    assert names == {
        "report.md",
        "results.json",
        "ttft_cdf_load_0p5.png",
        "ttft_cdf_load_0p9.png",
        "ttft_p99_vs_load.png",
        "goodput_vs_load.png",
    }
    for path in written:
        assert path.is_file() and path.parent == tmp_path / "out"
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG_SIGNATURE)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Load 0.5" in markdown and "## Load 0.9" in markdown
    assert "| policy | completed |" in markdown
    assert markdown.count("| round_robin |") == 2 and markdown.count("| sal |") == 2
    assert "![goodput_vs_load.png](goodput_vs_load.png)" in markdown
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["policy"], r["load_scale"]) for r in stored] == [
        (r["policy"], r["load_scale"]) for r in results
    ]


def test_write_report_without_records_skips_the_cdfs(tmp_path: Path) -> None:
    results, _ = _runs()
    written = write_report(results, None, tmp_path, "No records")
    assert not [p for p in written if p.name.startswith("ttft_cdf")]
    assert (tmp_path / "ttft_p99_vs_load.png").read_bytes().startswith(PNG_SIGNATURE)


def test_markdown_shows_nan_as_a_dash_and_defaults_the_load() -> None:
    summary: dict[str, float | int | str] = {"policy": "sal", "completed": 0, "ttft_p50": float("nan")}
    text = report_markdown([summary], "Empty")
    assert "## Load 1" in text
    assert "| sal | 0 | - |" in text
