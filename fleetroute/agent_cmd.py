"""``fleetroute agent``: run one replica agent (gRPC + OpenAI HTTP) until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from fleetroute import runtime
from replica_agent.config import AgentConfig, ConfigError, ExecutorKind, load_agent_config


@click.command()
@click.option("--executor", type=click.Choice([k.value for k in ExecutorKind]), help="[default: sim]")
@click.option("--gpu", help="GPU profile (sim) or label  [default: a100-80gb]")
@click.option("--model", help="model profile (sim) or served model name  [default: llama-3.1-8b]")
@click.option("--served-model-name", help="the name clients ask for, if not --model")
@click.option("--replica-id", help="[default: GPU-GRPCPORT]")
@click.option("--tier", type=click.Choice(["cloud", "edge"]), help="[default: cloud]")
@click.option("--host", help="address to listen on  [default: 127.0.0.1]")
@click.option("--grpc-port", type=click.IntRange(0, 65535), help="[default: 50061]")
@click.option("--http-port", type=click.IntRange(0, 65535), help="[default: 8001]")
@click.option("--remote-url", help="OpenAI-compatible server to front (remote executor)")
@click.option(
    "--register-with", multiple=True, help="a router's gRPC host:port to join (repeatable; retried)"
)
@click.option("--advertise-address", help="host:port routers dial for this agent  [default: HOST:GRPC-PORT]")
@click.option("--tokenizer", help="tokenizer.json file or directory  [default: approx]")
@click.option("--output-lengths", help="sim answer lengths, e.g. lognormal:median=151,sigma=0.86")
@click.option("--speedup", type=float, help="sim: run the modelled GPU this many times faster")
@click.option("--seed", type=click.IntRange(0), help="[default: 0]")
@click.option("--drain-timeout", "drain_timeout_s", type=click.FloatRange(0), help="[default: 30]")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="agent.yaml (flags win)"
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def agent(config_path: Path | None, log_level: str, **flags: Any) -> None:
    """Run a replica agent: an engine (or vLLM, or a remote server) behind gRPC and OpenAI HTTP."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_agent_config(config_path, flags)
        runtime.run(_serve(config))
    except (ConfigError, OSError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        pass


async def _serve(config: AgentConfig) -> None:
    from replica_agent.service.app import Agent

    agent = Agent(config)
    ports = await agent.start()
    info = agent.backend.info
    click.echo(
        f"fleetroute agent {info.replica_id}: {info.executor} executor, {info.gpu}, model {info.model}, "
        f"{info.num_blocks} KV blocks of {info.block_size}\n"
        f"  gRPC  {config.host}:{ports.grpc}\n"
        f"  HTTP  http://{config.host}:{ports.http}/v1  (metrics at /metrics)"
    )
    await agent.run_until_signalled()
