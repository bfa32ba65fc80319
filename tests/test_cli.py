import json
from pathlib import Path

from click.testing import CliRunner

from fleetroute.cli import main


def write_trace(path: Path, rows: list[str]) -> Path:
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


def test_profiles_lists_every_gpu_and_marks_extrapolations() -> None:
    result = CliRunner().invoke(main, ["profiles"])
    assert result.exit_code == 0, result.output
    for gpu in ("h100-80gb", "a100-80gb", "a100-40gb", "v100-32gb", "l4-24gb"):
        assert gpu in result.output
    assert "spec sheet" in result.output


def test_replay_prints_one_json_summary(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path / "t.csv",
        [f"2023-11-16 18:15:{10 + i:02d}.000,{100 + i},{5 + i}" for i in range(6)],
    )
    result = CliRunner().invoke(main, ["replay", "--trace", str(trace), "--gpu", "h100-80gb", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["requests"] == 6
    assert summary["ttft_p50_s"] > 0
    assert summary["e2e_p99_s"] >= summary["e2e_p50_s"]


def test_replay_reports_a_malformed_trace_in_one_line(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "bad.csv", ["2023-11-16 18:15:10.000,ten,5"])
    result = CliRunner().invoke(main, ["replay", "--trace", str(trace)])
    assert result.exit_code == 1
    assert "row 2: ContextTokens is not an integer" in result.output
    assert "Traceback" not in result.output


def test_unknown_gpu_is_a_usage_error(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", ["2023-11-16 18:15:10.000,10,5"])
    result = CliRunner().invoke(main, ["replay", "--trace", str(trace), "--gpu", "x100"])
    assert result.exit_code == 2
    assert "x100" in result.output
