"""``fleetroute predictor``: build length-prediction data, train predictors, evaluate them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from predictors.data import (
    DataFormatError,
    LengthRow,
    convert_alpaca_eval,
    load_rows,
    split_by_prompt,
    summarize,
    to_features,
    write_rows,
)
from predictors.evaluate import evaluate
from predictors.learned import BASELINE_KINDS, LEARNED_KINDS, fit_predictor
from predictors.learned import Progress as ProgressCallback
from predictors.saved import PredictorLoadError, load_predictor, read_metadata, save_predictor

KINDS = (*LEARNED_KINDS, *BASELINE_KINDS)
DEFAULT_SOURCE = Path("../shared/data/prompts")
TRAINED_PROMPTS_KEY = "trained_prompt_keys"  # in metadata.json's "training" section
_DATA = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group("predictor")
def predictor() -> None:
    """Output-length predictors: convert data, train, evaluate."""


def _rows(path: Path) -> list[LengthRow]:
    try:
        return load_rows(path)
    except DataFormatError as error:
        raise click.ClickException(str(error)) from None


@contextmanager
def _progress_bar(description: str) -> Iterator[ProgressCallback]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield report


@predictor.command()
@click.option("--data", "data_path", type=_DATA, required=True, help="JSONL rows: prompt, output_tokens, …")
@click.option("--kind", type=click.Choice(KINDS), required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--test-frac",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="fraction of the distinct prompts held out for the metrics",
)
@click.option(
    "--encoder-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="sentence-encoder directory for --kind embedding (default: the packaged all-MiniLM-L6-v2)",
)
def train(
    data_path: Path, kind: str, out_dir: Path, seed: int, test_frac: float, encoder_dir: Path | None
) -> None:
    """Train a predictor on DATA, hold out prompts, record held-out metrics, save it to OUT."""
    rows = _rows(data_path)
    try:
        train_rows, test_rows = split_by_prompt(rows, test_frac, seed)
    except ValueError as error:
        raise click.ClickException(f"{data_path}: {error}") from None
    requests = [to_features(row) for row in train_rows]
    try:
        with _progress_bar(f"training {kind}") as progress:
            model = fit_predictor(
                kind,
                requests,
                [row.output_tokens for row in train_rows],
                [row.prompt_key for row in train_rows],
                seed,
                encoder_dir=encoder_dir,
                progress=progress,
            )
    except (ValueError, RuntimeError, ImportError) as error:  # bad data, or the embedding extra missing
        raise click.ClickException(f"training {kind} failed: {error}") from None
    held_out = evaluate(
        model, [to_features(row) for row in test_rows], [row.output_tokens for row in test_rows]
    )
    training = {
        "data": str(data_path),
        "test_frac": test_frac,
        "train": summarize(train_rows),
        "test": summarize(test_rows),
        # so that `eval` can leave out the prompts the model has seen
        TRAINED_PROMPTS_KEY: sorted({row.prompt_key for row in train_rows}),
    }
    save_predictor(model, out_dir, seed=seed, training=training, metrics=held_out.to_json())
    m = held_out
    click.echo(
        f"{kind} → {out_dir}: held-out τ {m.kendall_tau:.3f} (per model {m.per_model_tau_mean:.3f}), "
        f"MAE {m.mae_tokens:.0f} tokens, p90 coverage {m.p90_coverage:.2f}, "
        f"latency p99 {m.latency_p99_us:.0f} µs ({m.n} rows, {summarize(test_rows)['prompts']} prompts)"
    )


@predictor.command("eval")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True)
@click.option("--data", "data_path", type=_DATA, required=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option(
    "--include-trained",
    is_flag=True,
    help="also score rows whose prompt the model was trained on (left out by default)",
)
def eval_command(model_dir: Path, data_path: Path, as_json: bool, include_trained: bool) -> None:
    """Evaluate the predictor saved in MODEL on the rows of DATA whose prompts it was not trained on."""
    try:
        metadata = read_metadata(model_dir)
        model = load_predictor(model_dir)
    except PredictorLoadError as error:
        raise click.ClickException(str(error)) from None
    rows = _rows(data_path)
    excluded = 0
    if not include_trained:
        trained = set(metadata.get("training", {}).get(TRAINED_PROMPTS_KEY, ()))
        kept = [row for row in rows if row.prompt_key not in trained]
        excluded = len(rows) - len(kept)
        if not kept:
            raise click.ClickException(
                f"every prompt in {data_path} was used to train {model_dir}; "
                "pass --include-trained to score them anyway"
            )
        rows = kept
    try:
        result = evaluate(model, [to_features(row) for row in rows], [row.output_tokens for row in rows])
    except ValueError as error:
        raise click.ClickException(f"evaluating {model_dir} failed: {error}") from None
    report: dict[str, Any] = {
        "kind": metadata["kind"],
        "model": str(model_dir),
        **result.to_json(),
        "excluded_trained_rows": excluded,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    table = Table(title=f"{metadata['kind']} predictor {model_dir} on {data_path.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if key != "per_model_tau":
            table.add_row(key, str(value))
    for model_name, tau in report["per_model_tau"].items():
        table.add_row(f"τ {model_name}", str(tau))
    Console().print(table)


@predictor.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--source",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_SOURCE,
    show_default=True,
    help="directory holding the AlpacaEval prompts and the 14 models' answers",
)
def convert(out_path: Path, source: Path) -> None:
    """Write JSONL training rows from the AlpacaEval prompts and answers (lengths in router tokens)."""
    try:
        rows = convert_alpaca_eval(source)
        count = write_rows(rows, out_path)
    except DataFormatError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write {out_path}: {error.strerror}") from None
    summary = summarize(rows)
    click.echo(f"{count} rows ({summary['prompts']} prompts, {len(summary['models'])} models) → {out_path}")
