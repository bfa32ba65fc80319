"""A whole fleet in one process: sim agents on free ports plus a router in front of them.

What ``fleetroute up`` runs, and what integration tests start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protos.snapshot import Tier
from replica_agent.config import AgentConfig, ExecutorKind
from replica_agent.service.app import Agent
from router.config import ReplicaConfig, RouterConfig, RouterConfigError
from router.service.router import Router

DEFAULT_GPUS = ("h100-80gb", "a100-80gb", "a100-80gb", "v100-32gb")


class FleetGroup(BaseModel):
    """``count`` sim replicas of one GPU profile (engine settings are EngineConfig fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu: str
    count: int = Field(default=1, ge=1, le=64)
    model: str = "llama-3.1-8b"
    tier: Tier = Tier.CLOUD
    engine: dict[str, Any] = Field(default_factory=dict)
    output_lengths: str | None = None


class FleetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: list[FleetGroup]


def fleet_from_gpus(gpus: list[str], replicas: int | None, model: str) -> FleetSpec:
    """``replicas`` sim agents cycling through ``gpus`` (all of them once when ``replicas`` is None)."""
    count = replicas if replicas is not None else len(gpus)
    chosen = [gpus[i % len(gpus)] for i in range(count)]
    return FleetSpec(replicas=[FleetGroup(gpu=gpu, model=model) for gpu in chosen])


def load_fleet(path: Path) -> FleetSpec:
    try:
        return FleetSpec.model_validate(yaml.safe_load(path.read_text()))
    except OSError as error:
        raise RouterConfigError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise RouterConfigError(f"{path} is not valid YAML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "fleet"
        raise RouterConfigError(f"{path}: {where}: {first['msg']}") from None


class LocalFleet:
    def __init__(
        self, spec: FleetSpec, router_settings: dict[str, Any], speedup: float = 1.0, seed: int = 0
    ) -> None:
        self.spec = spec
        self.router_settings = router_settings
        self.speedup = speedup
        self.seed = seed
        self.agents: list[Agent] = []
        self.router: Router | None = None

    def agent_configs(self) -> list[AgentConfig]:
        configs: list[AgentConfig] = []
        for group in self.spec.replicas:
            for _ in range(group.count):
                index = len(configs)
                settings: dict[str, Any] = {
                    "executor": ExecutorKind.SIM, "gpu": group.gpu, "model": group.model, "tier": group.tier,
                    "replica_id": f"{group.gpu}-{index}", "grpc_port": 0, "http_port": 0,
                    "speedup": self.speedup, "seed": self.seed + index, "engine": group.engine,
                    "drain_timeout_s": 2.0,
                }  # fmt: skip
                if group.output_lengths:
                    settings["output_lengths"] = group.output_lengths
                configs.append(AgentConfig.model_validate(settings))
        return configs

    async def start(self) -> Router:
        configs = self.agent_configs()  # validates every replica before anything listens
        try:
            for config in configs:
                agent = Agent(config)
                self.agents.append(agent)
                await agent.start()
            replicas = [
                ReplicaConfig(address=f"127.0.0.1:{agent.ports.grpc}", id=agent.config.id)
                for agent in self.agents
            ]
            router = Router(RouterConfig.model_validate({**self.router_settings, "replicas": replicas}))
            self.router = router
            await router.start()
        except BaseException:
            await self.stop()
            raise
        return router

    async def stop(self) -> None:
        if self.router is not None:
            await self.router.stop()
        for agent in self.agents:
            await agent.stop(drain_timeout_s=0.5)
