"""The ``fleetroute`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from fleetroute import __version__
from fleetroute.agent_cmd import agent
from fleetroute.policies_cmd import policies
from fleetroute.predictor_cmd import predictor
from fleetroute.simulate_cmd import simulate
from fleetroute.up_cmd import serve, up
from replica_agent.engine.config import BatchingMode, QueuePolicyName
from replica_agent.engine.replay import replay as replay_engine
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import (
    get_gpu_profile,
    get_model_profile,
    gpu_profile_names,
    model_profile_names,
)
from replica_agent.sim_replica import build_sim_replica
from router.sim.traces import TraceFormatError, load_azure_csv, load_mooncake_jsonl, to_specs


@click.group()
@click.version_option(__version__, prog_name="fleetroute")
def main() -> None:
    """Token-aware, KV-cache-aware routing for heterogeneous LLM GPU fleets."""


main.add_command(agent)
main.add_command(policies)
main.add_command(up)
main.add_command(serve)
main.add_command(simulate)
main.add_command(predictor)


@main.command()
@click.option("--model", type=click.Choice(model_profile_names()), default="llama-3.1-8b", show_default=True)
@click.option("--block-size", type=click.IntRange(1), default=16, show_default=True)
def profiles(model: str, block_size: int) -> None:
    """GPU profiles: KV capacity and modelled speed for MODEL."""
    table = Table(title=f"GPU profiles serving {model}")
    for column in ("gpu", "calibrated", "KV tokens", "decode ms (b=1)", "decode ms (b=64)", "prefill tok/s"):
        table.add_column(column, justify="right" if column != "gpu" else "left")
    for name in gpu_profile_names():
        gpu = get_gpu_profile(name)
        try:
            cost = StepCostModel(gpu, get_model_profile(model))
            capacity = cost.kv_capacity_blocks(block_size) * block_size
        except ValueError as error:
            table.add_row(name, "yes" if gpu.calibrated else "spec sheet", str(error), "", "", "")
            continue
        table.add_row(
            name,
            "yes" if gpu.calibrated else "spec sheet",
            f"{capacity:,}",
            f"{cost.decode_step_seconds(1, 1024) * 1e3:.1f}",
            f"{cost.decode_step_seconds(64, 1024) * 1e3:.1f}",
            f"{cost.prefill_tokens_per_s(0, 0):,.0f}",
        )
    Console().print(table)


@main.command()
@click.option(
    "--trace", "trace_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option("--gpu", type=click.Choice(gpu_profile_names()), default="a100-80gb", show_default=True)
@click.option("--model", type=click.Choice(model_profile_names()), default="llama-3.1-8b", show_default=True)
@click.option(
    "--queue", type=click.Choice([p.value for p in QueuePolicyName]), default="fcfs", show_default=True
)
@click.option(
    "--batching", type=click.Choice([m.value for m in BatchingMode]), default="continuous", show_default=True
)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="first N requests")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="arrival-rate multiplier (2 = twice as fast)",
)
@click.option("--max-num-seqs", type=click.IntRange(1), default=256, show_default=True)
@click.option("--max-num-batched-tokens", type=click.IntRange(1), default=8192, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def replay(
    trace_path: Path,
    gpu: str,
    model: str,
    queue: str,
    batching: str,
    limit: int,
    rate: float,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    as_json: bool,
) -> None:
    """Replay a trace (Azure CSV or Mooncake JSONL) through one cost-model replica in virtual time."""
    try:
        if trace_path.suffix == ".jsonl":
            trace = load_mooncake_jsonl(trace_path, limit=limit)
        else:
            trace = load_azure_csv(trace_path, limit=limit)
    except TraceFormatError as error:
        raise click.ClickException(str(error)) from None
    max_len = max(r.prompt_tokens + r.output_tokens for r in trace) + 1
    replica = build_sim_replica(
        gpu,
        model,
        queue_policy=queue,
        batching=batching,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max(max_len, max_num_batched_tokens),
    )
    try:
        result = replay_engine(replica.engine, replica.executor.execute, to_specs(trace, time_scale=1 / rate))
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    summary = {
        key: int(value) if key in ("requests", "preemptions", "steps") else round(value, 4)
        for key, value in result.summary().items()
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    table = Table(title=f"{trace_path.name} → 1×{gpu} ({model}, {queue}, {batching})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)
