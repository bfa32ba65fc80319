import json
from pathlib import Path

from click.testing import CliRunner, Result

from fleetroute.simulate_cmd import simulate

SUMMARY_KEYS = {
    "policy",
    "load_scale",
    "requests",
    "completed",
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
    "sim_wall_s",
}
SMALL = ["--trace", "azure2023_conv", "--limit", "60", "--fleet", "hetero8", "--probe-requests", "60"]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(simulate, [*SMALL, *args])


def _json_lines(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_one_json_object_per_policy_and_load_with_every_key() -> None:
    lines = _json_lines(_invoke("--policy", "round_robin,sal,oracle", "--load-scale", "0.5,0.9", "--json"))
    assert [(line["policy"], line["load_scale"]) for line in lines] == [
        (policy, load) for load in (0.5, 0.9) for policy in ("round_robin", "sal", "oracle")
    ]
    for line in lines:
        assert set(line) >= SUMMARY_KEYS
        assert line["completed"] == 60
        assert all(isinstance(line[key], float) for key in ("ttft_p99", "e2e_p50", "sim_wall_s"))
    assert lines[3]["rate_rps"] > lines[0]["rate_rps"]  # type: ignore[operator]


def test_same_seed_gives_the_same_json_twice() -> None:
    args = ("--policy", "power_of_two,sal", "--load-scale", "0.8", "--predictor", "noisy:0.5", "--json")
    runs = [_json_lines(_invoke(*args, "--seed", "3")) for _ in range(2)]
    for run in runs:
        for line in run:
            line.pop("sim_wall_s")
    assert runs[0] == runs[1]


def test_out_writes_the_report_plots_and_saturation(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = _invoke("--policy", "round_robin,sal", "--load-scale", "0.5,1.1", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = {path.name for path in out.iterdir()}
    assert {
        "report.md",
        "results.json",
        "saturation.json",
        "ttft_p99_vs_load.png",
        "goodput_vs_load.png",
    } <= names
    assert {"ttft_cdf_load_0p5.png", "ttft_cdf_load_1p1.png"} <= names
    saturation = json.loads((out / "saturation.json").read_text())
    assert set(saturation["per_replica_rps"]) == {"h100-80gb", "a100-80gb", "v100-32gb"}
    assert len(json.loads((out / "results.json").read_text())) == 4


def test_rate_gives_the_arrival_rate_and_no_load_scale() -> None:
    (line,) = _json_lines(_invoke("--policy", "least_kv", "--rate", "25", "--json"))
    assert line["rate_rps"] == 25.0 and line["load_scale"] is None


def test_prefix_sharing_of_mooncake_reaches_the_engines() -> None:
    args = [
        "--trace",
        "mooncake_conversation",
        "--limit",
        "40",
        "--policy",
        "prefix",
        "--rate",
        "0.5",
        "--json",
    ]
    (line,) = _json_lines(CliRunner().invoke(simulate, args))
    assert line["prefix_hit_frac"] > 0  # type: ignore[operator]


def test_bad_input_gets_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,ten,5\n")
    cases = [
        (["--trace", str(broken)], "broken.csv row 3: prompt_tokens is not an integer"),
        (["--trace", "no_such_trace"], "not a trace name"),
        ([*SMALL, "--rate", "2", "--load-scale", "1"], "at most one of --load-scale"),
        ([*SMALL, "--predictor", "noisy:x"], "Invalid value for '--predictor'"),
        ([*SMALL, "--policy", "clairvoyant"], "unknown policy"),
        ([*SMALL, "--fleet", "nowhere.yaml"], "neither a fleet preset"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(simulate, args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
