"""``fleetroute up`` (a local heterogeneous fleet plus the router) and ``fleetroute serve`` (the
router alone, from ``router.yaml``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleetroute import runtime
from replica_agent.config import ConfigError
from replica_agent.executors.gpu_profiles import gpu_profile_names
from router.config import RouterConfigError, load_router_config
from router.policy.registry import policy_names
from router.service.local_fleet import DEFAULT_GPUS, LocalFleet, fleet_from_gpus, load_fleet
from router.service.router import Router

log = logging.getLogger("fleetroute")


def _gpu_list(value: str) -> list[str]:
    gpus = [g.strip() for g in value.split(",") if g.strip()]
    unknown = [g for g in gpus if g not in gpu_profile_names()]
    if unknown or not gpus:
        raise click.BadParameter(f"unknown GPU profile(s) {', '.join(unknown) or '(none)'}; "
                                 f"choose from {', '.join(gpu_profile_names())}")  # fmt: skip
    return gpus


@click.command()
@click.option("--replicas", type=click.IntRange(1, 64), help="number of sim agents (cycles through --gpus)")
@click.option(
    "--gpus", default=",".join(DEFAULT_GPUS), show_default=True, help="GPU profiles, comma-separated"
)
@click.option("--fleet", "fleet_path", type=click.Path(dir_okay=False, path_type=Path), help="fleet.yaml")
@click.option("--model", default="llama-3.1-8b", show_default=True)
@click.option("--policy", type=click.Choice(policy_names()), default="sal", show_default=True)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="router HTTP port"
)
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=50051, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--speedup", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="run the modelled GPUs this many times faster than real time")  # fmt: skip
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="stop after this many seconds")
def up(
    replicas: int | None, gpus: str, fleet_path: Path | None, model: str, policy: str, port: int,
    grpc_port: int, host: str, speedup: float, duration: float | None,
) -> None:  # fmt: skip
    """Start a local fleet of cost-model GPU agents and the router in front of them."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_fleet(fleet_path) if fleet_path else fleet_from_gpus(_gpu_list(gpus), replicas, model)
        settings = {"host": host, "http_port": port, "grpc_port": grpc_port, "policy": policy}
        runtime.run(_run_fleet(LocalFleet(spec, settings, speedup=speedup), duration))
    except (ConfigError, RouterConfigError, OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--port", type=click.IntRange(0, 65535), help="HTTP port (overrides the file)")
@click.option("--grpc-port", type=click.IntRange(0, 65535), help="gRPC port (overrides the file)")
@click.option("--policy", type=click.Choice(policy_names()), help="policy (overrides the file)")
def serve(config_path: Path, port: int | None, grpc_port: int | None, policy: str | None) -> None:
    """Run the router alone, in front of the replicas listed in router.yaml."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_router_config(
            config_path, {"http_port": port, "grpc_port": grpc_port, "policy": policy}
        )
        runtime.run(_serve_router(Router(config)))
    except (RouterConfigError, OSError) as error:
        raise click.ClickException(str(error)) from None


async def _serve_router(router: Router) -> None:
    ports = await router.start()
    click.echo(f"fleetroute router ({router.policy.name}): http://{router.config.host}:{ports.http}/v1, "
               f"gRPC {router.config.host}:{ports.grpc}")  # fmt: skip
    try:
        await _until_signalled(None)
    finally:
        await router.stop()


async def _run_fleet(fleet: LocalFleet, duration: float | None) -> None:
    router = await fleet.start()
    try:
        _banner(router)
        if sys.stdout.isatty():
            with Live(_load_table(router), refresh_per_second=4, console=Console()) as live:
                await _until_signalled(duration, lambda: live.update(_load_table(router)))
        else:
            await _until_signalled(duration, lambda: _log_load(router), interval_s=5.0)
    finally:
        await fleet.stop()
        click.echo("fleet stopped")


def _banner(router: Router) -> None:
    url = f"http://{router.config.host}:{router.ports.http}"
    model = next(iter(router.models()), "llama-3.1-8b")
    count = len(router.fleet.descriptors())
    click.echo(
        f"fleetroute up: {count} replicas behind the router ({router.policy.name})\n"
        f"  OpenAI API  {url}/v1      metrics {url}/metrics      admin {url}/admin/replicas\n"
        f"  gRPC        {router.config.host}:{router.ports.grpc}\n\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'\n\n'
        f"  python -c \"import openai; c = openai.OpenAI(base_url='{url}/v1', api_key='none'); "
        f"print(c.completions.create(model='{model}', prompt='Hello', max_tokens=32).choices[0].text)\"\n\n"
        "Ctrl-C stops everything."
    )


def _rows(router: Router) -> list[tuple[str, ...]]:
    view = router.cluster.view(time.monotonic())
    rows: list[tuple[str, ...]] = []
    for load in sorted(view.replicas, key=lambda r: r.replica_id):
        kv = f"{100 * load.projected_kv_usage:5.1f}%" if load.total_blocks else "  ?"
        state = "ok" if load.healthy and not load.circuit_open else "down"
        rows.append((load.replica_id, load.gpu, state, kv, str(load.num_running), str(load.queue_depth),
                     str(load.inflight_requests)))  # fmt: skip
    return rows


def _load_table(router: Router) -> Table:
    table = Table(title=f"fleet load ({router.policy.name})")
    for column in ("replica", "gpu", "state", "KV used", "running", "queued", "in flight"):
        table.add_column(column, justify="left" if column in ("replica", "gpu", "state") else "right")
    for row in _rows(router):
        table.add_row(*row)
    return table


def _log_load(router: Router) -> None:
    for replica_id, gpu, state, kv, running, queued, inflight in _rows(router):
        click.echo(f"{replica_id} {gpu} {state} kv={kv.strip()} running={running} queued={queued} "
                   f"inflight={inflight}")  # fmt: skip


async def _until_signalled(duration: float | None, tick: Any = None, interval_s: float = 0.25) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else loop.time() + duration
    while not stop.is_set():
        if deadline is not None and loop.time() >= deadline:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        if tick is not None and not stop.is_set():
            tick()
