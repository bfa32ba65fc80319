"""``fleetroute simulate``: replay a trace on a simulated fleet under several policies and loads."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.sim.fleet import FleetError, FleetSpec, load_fleet
from router.sim.load import DEFAULT_PROBE_REQUESTS, Saturation
from router.sim.markdown import write_report
from router.sim.policies import sim_policy_names
from router.sim.predict import PREDICTOR_SPECS, PredictorSpecError, build_predictor, parse_predictor
from router.sim.report import RequestRecord, SimResult
from router.sim.simulator import SimConfig
from router.sim.sources import load_trace, trace_names
from router.sim.sweep import LoadPoint, Summary, expected_requests, load_points, sweep
from router.sim.traces import TraceFormatError, TraceRequest

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


def _policies(_context: click.Context, _param: click.Parameter, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in sim_policy_names()]
    if not names or unknown:
        raise click.BadParameter(f"unknown policy {unknown}; choose from {', '.join(sim_policy_names())}")
    return names


def _load_scales(_context: click.Context, _param: click.Parameter, value: str | None) -> list[float]:
    if value is None:
        return []
    try:
        scales = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not scales or any(not 0 < s < math.inf for s in scales):
        raise click.BadParameter("load scales must be positive numbers")
    return scales


def _predictor(_context: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        canonical = parse_predictor(value)
        build_predictor(canonical)  # a saved model is loaded once here, so a damaged one fails now
        return canonical
    except PredictorSpecError as error:
        raise click.BadParameter(str(error)) from None


_PLAIN_WIDTH = 200  # a table printed to a file or pipe is not squeezed to 80 columns
_POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command("simulate")
@click.option(
    "--trace", "trace_name", required=True, help=f"A trace name ({', '.join(trace_names())}) or file."
)
@click.option("--fleet", "fleet_name", default="hetero8", show_default=True, help="Preset name or YAML file.")
@click.option(
    "--policy",
    "policies",
    default="round_robin,sal",
    show_default=True,
    callback=_policies,
    help="Comma-separated.",
)
@click.option(
    "--load-scale",
    "scales",
    default=None,
    callback=_load_scales,
    help="Loads relative to saturation, e.g. 0.5,0.9.",
)
@click.option("--rate", default=None, type=_POSITIVE, help="Mean arrival rate in requests/s.")
@click.option("--rate-scale", default=None, type=_POSITIVE, help="Multiplier of the trace's own rate.")
@click.option("--duration", default=None, type=_POSITIVE, help="Seconds of arrivals (after rescaling).")
@click.option("--limit", default=None, type=click.IntRange(min=2), help="First N requests of the trace.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--slo-ttft", default=2.0, show_default=True, type=_POSITIVE, help="Seconds, for goodput.")
@click.option("--slo-tpot", default=0.1, show_default=True, type=_POSITIVE, help="Seconds, for goodput.")
@click.option(
    "--predictor", default="none", show_default=True, callback=_predictor, help=" | ".join(PREDICTOR_SPECS)
)
@click.option("--snapshot-interval", default=0.1, show_default=True, type=_POSITIVE, help="Seconds.")
@click.option("--snapshot-staleness", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--router-latency", default=0.001, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--probe-requests", default=DEFAULT_PROBE_REQUESTS, show_default=True, type=click.IntRange(min=10)
)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--records",
    "records_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every request's outcome here (JSON lines, one per request, policy and load).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per policy and load.")
def simulate(
    trace_name: str,
    fleet_name: str,
    policies: list[str],
    scales: list[float],
    rate: float | None,
    rate_scale: float | None,
    duration: float | None,
    limit: int | None,
    seed: int,
    slo_ttft: float,
    slo_tpot: float,
    predictor: str,
    snapshot_interval: float,
    snapshot_staleness: float,
    router_latency: float,
    probe_requests: int,
    out_dir: Path | None,
    records_path: Path | None,
    as_json: bool,
) -> None:
    """Replay a trace on a simulated fleet: the real engines and the real policies in virtual time.

    Load 1.0 is the fleet's saturation point: the sum of each replica's own rate when saturated by
    a burst of the trace's first --probe-requests requests."""
    if sum(given is not None and given != [] for given in (scales, rate, rate_scale)) > 1:
        raise click.UsageError("give at most one of --load-scale, --rate and --rate-scale")
    config = SimConfig(router_latency, snapshot_interval, snapshot_staleness, seed=seed)
    console = Console(stderr=True)
    try:
        fleet = load_fleet(fleet_name)
        trace = load_trace(trace_name, limit, seed)
        with console.status("finding the fleet's saturation point", spinner="dots"):
            points, saturation = load_points(trace, fleet, config, scales, rate, rate_scale, probe_requests)
    except (FleetError, TraceFormatError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    if saturation is not None and not as_json:
        console.print(_saturation_line(saturation))
    summaries: list[Summary] = []
    records: dict[tuple[str, float], list[RequestRecord]] = {}
    if records_path is not None:
        records_path.write_text("")
    with _progress(console) as progress:
        runs = sweep(
            trace, fleet, policies, points, config, predictor, duration, _tracker(progress, trace, duration)
        )
        for run in runs:
            summary = run.summary(slo_ttft, slo_tpot)
            summaries.append(summary)
            records[run.policy, _load_key(run.point)] = list(run.result.records)
            if records_path is not None:
                _append_records(records_path, run.result, summary)
            if as_json:
                click.echo(json.dumps(_json_safe(summary)))
    if not as_json:
        out = Console()
        _print_table(summaries, fleet, out if out.is_terminal else Console(width=_PLAIN_WIDTH))
    if out_dir is not None:
        title = f"{trace_name} on {fleet.name} ({fleet.size} replicas of {fleet.model})"
        written = write_report([_with_load(s) for s in summaries], records, out_dir, title)
        if saturation is not None:
            (out_dir / "saturation.json").write_text(
                json.dumps(_saturation_dict(saturation), indent=2) + "\n"
            )
        console.print(f"report: {written[0]}")


def _progress(console: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def _tracker(
    progress: Progress, trace: Sequence[TraceRequest], duration: float | None
) -> Callable[[str, LoadPoint], Callable[[], None]]:
    def start(policy: str, point: LoadPoint) -> Callable[[], None]:
        label = (
            f"{policy} at load {point.load_scale:g}"
            if point.load_scale
            else f"{policy} at {point.rate_rps:.3g} req/s"
        )
        task = progress.add_task(label, total=expected_requests(trace, point, duration))
        return lambda: progress.advance(task)

    return start


def _load_key(point: LoadPoint) -> float:
    return point.load_scale if point.load_scale is not None else point.rate_scale


def _with_load(summary: Summary) -> dict[str, float | int | str]:
    """The report's rows, with the rate multiplier standing in for an unknown load scale."""
    load = summary["load_scale"] if summary["load_scale"] is not None else summary["rate_scale"]
    return {k: v for k, v in {**summary, "load_scale": load}.items() if v is not None}


def _saturation_line(saturation: Saturation) -> str:
    kinds = ", ".join(f"{kind} {rps:.3g}" for kind, rps in saturation.per_replica_rps.items())
    return (
        f"saturation (load 1.0): {saturation.capacity_rps:.3g} req/s = "
        f"{saturation.rate_scale:.3g}x the trace's rate (per replica, req/s: {kinds})"
    )


def _saturation_dict(saturation: Saturation) -> dict[str, object]:
    return {
        "capacity_rps": saturation.capacity_rps,
        "rate_scale": saturation.rate_scale,
        "per_replica_rps": dict(saturation.per_replica_rps),
        "probe_requests": saturation.probe_requests,
    }


def _json_safe(summary: Summary) -> Summary:
    """Non-finite numbers become null so each line is strict JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}


def _append_records(path: Path, result: SimResult, summary: Summary) -> None:
    outcomes = [*(r.as_dict() for r in result.records), *(d.as_dict() for d in result.dropped)]
    lead = {"policy": result.policy, "load_scale": summary["load_scale"], "rate_rps": summary["rate_rps"]}
    with path.open("a") as handle:
        for outcome in outcomes:
            handle.write(json.dumps({**lead, **outcome}) + "\n")


def _print_table(summaries: list[Summary], fleet: FleetSpec, console: Console) -> None:
    table = Table(title=f"Simulated fleet {fleet.name}: {fleet.size} replicas of {fleet.model}")
    table.add_column("policy", style="bold", no_wrap=True)
    table.add_column("load", justify="right")
    table.add_column("req/s", justify="right")
    for column in _TABLE_COLUMNS:
        table.add_column(column, justify="right")
    for summary in summaries:
        load = summary["load_scale"]
        cells = [_cell(summary[column]) for column in _TABLE_COLUMNS]
        table.add_row(
            str(summary["policy"]), "-" if load is None else f"{load:g}", _cell(summary["rate_rps"]), *cells
        )
    console.print(table)


def _cell(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)
