"""``fleetroute simulate``: replay a trace on a simulated fleet under one or more routing policies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.policy.registry import policy_names
from router.sim.fleet import FleetError, FleetSpec, load_fleet
from router.sim.report import SimResult
from router.sim.runner import load_trace
from router.sim.runner import simulate as run_simulation
from router.sim.simulator import SimConfig
from router.sim.traces import TraceFormatError, TraceRequest

Summary = dict[str, float | int | str]
_TABLE_COLUMNS = (
    "completed",
    "dropped",
    "ttft_p50",
    "ttft_p99",
    "tpot_p50",
    "e2e_p99",
    "throughput_tok_s",
    "goodput",
    "preemptions",
    "prefix_hit_frac",
    "imbalance",
)


def _policies(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in policy_names()]
    if not names or unknown:
        raise click.BadParameter(f"unknown policy {unknown}; choose from {', '.join(policy_names())}")
    return names


@click.command("simulate")
@click.option("--trace", "trace_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--fleet", "fleet_name", default="hetero8", show_default=True, help="Preset name or YAML file.")
@click.option("--policy", "policy_list", default="round_robin,sal", show_default=True, help="Comma-separated")
@click.option("--rate-scale", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="First N requests of the trace.")
@click.option(
    "--duration", default=None, type=click.FloatRange(min=0, min_open=True), help="Seconds of arrivals."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--slo-ttft", default=2.0, show_default=True, type=float, help="Seconds, for goodput.")
@click.option("--slo-tpot", default=0.1, show_default=True, type=float, help="Seconds, for goodput.")
@click.option(
    "--records",
    "records_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every request's outcome here (JSON lines, one per request and policy).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per policy instead of a table.")
def simulate(
    trace_path: Path,
    fleet_name: str,
    policy_list: str,
    rate_scale: float,
    limit: int | None,
    duration: float | None,
    seed: int,
    slo_ttft: float,
    slo_tpot: float,
    records_path: Path | None,
    as_json: bool,
) -> None:
    """Replay TRACE on a simulated fleet (real engines and policies, virtual time)."""
    policies = _policies(policy_list)
    try:
        fleet = load_fleet(fleet_name)
        trace = load_trace(trace_path, limit)
    except (FleetError, TraceFormatError) as error:
        raise click.ClickException(str(error)) from None
    total = len(trace) if duration is None else sum(r.arrival_s / rate_scale < duration for r in trace)
    config = SimConfig(seed=seed)
    console = Console(stderr=True)
    summaries: list[Summary] = []
    if records_path is not None:
        records_path.write_text("")
    for policy in policies:
        result = _run_one(trace, fleet, policy, config, rate_scale, duration, total, console)
        if records_path is not None:
            _append_records(records_path, result)
        summary = result.summary(slo_ttft, slo_tpot)
        summaries.append(summary)
        if as_json:
            click.echo(json.dumps(summary))
    if not as_json:
        _print_table(summaries, fleet, Console())


def _run_one(
    trace: list[TraceRequest],
    fleet: FleetSpec,
    policy: str,
    config: SimConfig,
    rate_scale: float,
    duration: float | None,
    total: int,
    console: Console,
) -> SimResult:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(policy, total=total)
        result = run_simulation(
            trace,
            fleet,
            policy,
            config,
            rate_scale=rate_scale,
            duration_s=duration,
            on_request_done=lambda: progress.advance(task),
        )
    return result


def _append_records(path: Path, result: SimResult) -> None:
    outcomes = [*(r.as_dict() for r in result.records), *(d.as_dict() for d in result.dropped)]
    with path.open("a") as handle:
        for outcome in outcomes:
            handle.write(json.dumps({"policy": result.policy, **outcome}) + "\n")


def _print_table(summaries: list[Summary], fleet: FleetSpec, console: Console) -> None:
    table = Table(title=f"Simulated fleet {fleet.name}: {fleet.size} replicas of {fleet.model}")
    table.add_column("policy", style="bold", no_wrap=True)
    for column in _TABLE_COLUMNS:
        table.add_column(column, justify="right")
    for summary in summaries:
        table.add_row(str(summary["policy"]), *(_cell(summary[column]) for column in _TABLE_COLUMNS))
    console.print(table)


def _cell(value: float | int | str) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)
