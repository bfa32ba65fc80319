"""Agent settings: command-line flags and an optional ``agent.yaml`` validated into one model."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protos.snapshot import Tier
from replica_agent.executors.gpu_profiles import gpu_profile_names, model_profile_names
from replica_agent.executors.output_lengths import DEFAULT_OUTPUT_LENGTHS, OutputLengthDistribution


class ExecutorKind(StrEnum):
    SIM = "sim"
    TORCH = "torch"
    VLLM = "vllm"
    REMOTE = "remote"


class ConfigError(ValueError):
    """Settings that cannot work, said in one line."""


class TorchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    num_blocks: int = Field(default=1024, gt=0)
    weights: Path | None = None
    threads: int | None = Field(default=None, gt=0)
    vocab_size: int = Field(default=512, gt=16)
    hidden_size: int = Field(default=128, gt=0)
    num_layers: int = Field(default=4, gt=0)


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    executor: ExecutorKind = ExecutorKind.SIM
    gpu: str = "a100-80gb"
    model: str = "llama-3.1-8b"
    served_model_name: str | None = None
    replica_id: str | None = None
    tier: Tier = Tier.CLOUD
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=50061, ge=0, le=65535)
    http_port: int = Field(default=8001, ge=0, le=65535)
    register_with: list[str] = Field(default_factory=list)  # routers' gRPC host:port
    advertise_address: str | None = None  # host:port routers dial; default host:bound gRPC port
    router_key: str | None = None  # the routers' admin key, if they require one
    remote_url: str | None = None
    remote_api_key: str | None = None
    tokenizer: str | None = None
    snapshot_interval_s: float = Field(default=0.1, gt=0, le=1.0)
    output_lengths: str = DEFAULT_OUTPUT_LENGTHS
    seed: int = Field(default=0, ge=0)
    speedup: float = Field(default=1.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    max_buffered_tokens: int = Field(default=4096, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1.0)
    engine: dict[str, Any] = Field(default_factory=dict)
    torch: TorchSettings = Field(default_factory=TorchSettings)

    @field_validator("output_lengths")
    @classmethod
    def _lengths_parse(cls, value: str) -> str:
        OutputLengthDistribution.parse(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        if self.executor is ExecutorKind.SIM and self.gpu not in gpu_profile_names():
            raise ValueError(
                f"unknown GPU profile {self.gpu!r} (choose from {', '.join(gpu_profile_names())})"
            )
        if self.executor is ExecutorKind.SIM and self.model not in model_profile_names():
            raise ValueError(
                f"the sim executor needs a model profile, not {self.model!r} "
                f"(choose from {', '.join(model_profile_names())})"
            )
        if self.executor is ExecutorKind.REMOTE and not self.remote_url:
            raise ValueError("the remote executor needs --remote-url (the OpenAI-compatible server to front)")
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @property
    def id(self) -> str:
        return self.replica_id or f"{self.gpu}-{self.grpc_port}"


def load_agent_config(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Settings from ``path`` (YAML) with the flags that were given on top; one-line errors."""
    settings: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings")
        settings.update(loaded or {})
    given = {key: value for key, value in overrides.items() if value is not None and value != ()}
    settings.update({key: list(value) if isinstance(value, tuple) else value for key, value in given.items()})
    try:
        return AgentConfig.model_validate(settings)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {message}") from None
