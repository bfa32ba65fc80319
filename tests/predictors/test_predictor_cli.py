from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fleetroute.cli import main
from predictors.data import write_rows
from tests.predictors.synthetic import synthetic_rows

METRIC_KEYS = {
    "kind", "n", "kendall_tau", "spearman", "mae_tokens", "p90_coverage", "latency_p50_us", "latency_p99_us",
    "per_model_tau", "per_model_tau_mean",
}  # fmt: skip


def data_file(tmp_path: Path, prompts: int = 50) -> Path:
    path = tmp_path / "rows.jsonl"
    write_rows(synthetic_rows(prompts=prompts), path)
    return path


def test_train_then_eval_end_to_end(tmp_path: Path) -> None:
    data = data_file(tmp_path)
    runner = CliRunner()
    trained = runner.invoke(
        main,
        [
            "predictor",
            "train",
            "--data",
            str(data),
            "--kind",
            "length_regression",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "held-out τ" in trained.output
    metadata = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert metadata["training"]["test"]["prompts"] == 10 and metadata["metrics"]["n"] == 20
    evaluated = runner.invoke(
        main, ["predictor", "eval", "--model", str(tmp_path / "m"), "--data", str(data), "--json"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert set(report) >= METRIC_KEYS
    # the 40 trained prompts' rows are left out: only the 10 held-out prompts' 20 rows are scored
    assert report["n"] == 20 and report["excluded_trained_rows"] == 80
    assert report["kind"] == "length_regression"
    assert set(report["per_model_tau"]) == {"terse-model", "verbose-model"}
    arguments = ["predictor", "eval", "--model", str(tmp_path / "m"), "--data", str(data), "--json"]
    everything = runner.invoke(main, [*arguments, "--include-trained"])
    assert everything.exit_code == 0, everything.output
    assert json.loads(everything.output)["n"] == 100


def test_eval_refuses_data_the_model_was_trained_on(tmp_path: Path) -> None:
    data = data_file(tmp_path)
    runner = CliRunner()
    out = tmp_path / "m"
    trained = runner.invoke(
        main, ["predictor", "train", "--data", str(data), "--kind", "mean", "--out", str(out)]
    )
    assert trained.exit_code == 0, trained.output
    seen = set(json.loads((out / "metadata.json").read_text())["training"]["trained_prompt_keys"])
    assert len(seen) == 40
    only_trained = tmp_path / "trained.jsonl"
    write_rows([row for row in synthetic_rows(prompts=50) if row.prompt_key in seen], only_trained)
    result = runner.invoke(main, ["predictor", "eval", "--model", str(out), "--data", str(only_trained)])
    assert result.exit_code != 0
    assert "was used to train" in result.output and "Traceback" not in result.output


def test_training_with_the_same_seed_gives_the_same_predictions(tmp_path: Path) -> None:
    data = data_file(tmp_path, prompts=30)
    runner = CliRunner()
    reports = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = runner.invoke(
            main,
            [
                "predictor",
                "train",
                "--data",
                str(data),
                "--kind",
                "sklearn",
                "--out",
                str(out),
                "--seed",
                "3",
            ],
        )
        assert result.exit_code == 0, result.output
        reports.append((out / "arrays.safetensors").read_bytes())
    assert reports[0] == reports[1]


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "output_tokens": 1}\n{"prompt": "y"}\n')
    result = runner.invoke(
        main, ["predictor", "train", "--data", str(bad), "--kind", "mean", "--out", str(tmp_path / "m")]
    )
    assert result.exit_code != 0
    assert f"{bad}:2: missing 'output_tokens'" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        main, ["predictor", "eval", "--model", str(tmp_path / "nothing"), "--data", str(bad)]
    )
    assert result.exit_code != 0 and "no predictor directory" in result.output
    result = runner.invoke(
        main, ["predictor", "convert", "--out", str(tmp_path / "o.jsonl"), "--source", str(tmp_path)]
    )
    assert result.exit_code != 0 and "cannot read" in result.output and "Traceback" not in result.output
