"""Router settings: ``router.yaml`` and flags, validated into one model with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from predictors.drift import DriftSettings
from predictors.online import CorrectionSettings
from protos.snapshot import Tier

NonEmptyStr = Annotated[str, Field(min_length=1)]


class RouterConfigError(ValueError):
    """Settings that cannot work, said in one line."""


class ReplicaConfig(BaseModel):
    """One replica. Agents describe themselves (``Info``); for plain OpenAI servers say what they
    serve. ``gpu`` and ``model_profile`` name cost-model profiles so token-aware policies know the
    replica's speed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str
    transport: Literal["agent", "http"] = "agent"
    id: str | None = None
    model: str | None = None
    gpu: str | None = None
    tier: Tier | None = None
    model_profile: str | None = None
    max_model_len: int = Field(default=0, ge=0)
    api_key: str | None = None

    @property
    def replica_id(self) -> str:
        return self.id or self.address


class TimeoutConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_s: float = Field(default=2.0, gt=0)
    first_token_s: float = Field(default=60.0, gt=0)
    idle_s: float = Field(default=60.0, gt=0)


class AdmissionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_backoff_s: float = Field(default=0.025, ge=0)
    max_queue_per_replica: int = Field(default=256, ge=1)
    max_kv_usage: float = Field(default=0.995, gt=0, le=1)
    retry_after_s: int = Field(default=1, ge=1)


class OnlineCorrectionConfig(BaseModel):
    """Rescaling of a learned model's estimates by its recent errors (``predictors.online``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    prior_observations: float = Field(default=20.0, ge=0)
    window: int = Field(default=200, ge=1)
    max_factor: float = Field(default=4.0, ge=1)

    def settings(self) -> CorrectionSettings | None:
        """The pure core's settings; None when the correction is off."""
        return CorrectionSettings(**self.model_dump(exclude={"enabled"})) if self.enabled else None


class DriftConfig(BaseModel):
    """When to fall back from a learned model to the running average (``predictors.drift``);
    ``enabled: false`` keeps the model in use and only measures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    window: int = Field(default=200, ge=2)
    min_samples: int = Field(default=100, ge=2)
    evaluate_every: int = Field(default=25, ge=1)
    error_margin: float = Field(default=0.02, ge=0, lt=1)
    tau_floor: float = Field(default=0.1, ge=-1, le=1)
    hysteresis: float = Field(default=0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> DriftConfig:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) cannot exceed window ({self.window})")
        if self.error_margin + self.hysteresis >= 1:
            raise ValueError("error_margin + hysteresis must be below 1")
        return self

    def settings(self) -> DriftSettings:
        """The pure core's settings (``enabled: false`` measures without switching)."""
        return DriftSettings(**self.model_dump(exclude={"enabled"}), switching=self.enabled)


class PredictorConfig(BaseModel):
    """The output-length predictor: ``running_average`` (per model, prediction-free) or a learned
    ``model`` saved in ``model_dir`` (giving ``model_dir`` alone means ``kind: model``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["running_average", "model"] | None = None
    model_dir: Path | None = None
    online_correction: OnlineCorrectionConfig = Field(default_factory=OnlineCorrectionConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _kind_matches_model_dir(self) -> PredictorConfig:
        if self.kind == "model" and self.model_dir is None:
            raise ValueError("model_dir is required when kind is model")
        if self.kind == "running_average" and self.model_dir is not None:
            raise ValueError("model_dir is only for kind model")
        return self

    @property
    def learned(self) -> bool:
        return self.model_dir is not None


class RouterConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    policy: str = "sal"
    policy_params: dict[str, Any] = Field(default_factory=dict)
    policy_file: Path | None = None
    replicas: list[ReplicaConfig] = Field(default_factory=list)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    # model name -> a local tokenizer.json file or directory; other models get the approximate tokenizer
    tokenizers: dict[NonEmptyStr, NonEmptyStr] = Field(default_factory=dict)
    scrape_interval_s: float = Field(default=0.15, ge=0.1, le=0.25)
    health_check_interval_s: float = Field(default=2.0, gt=0)
    api_keys: list[str] = Field(default_factory=list)
    admin_key: str | None = None
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _unique_ids(self) -> RouterConfig:
        ids = [replica.replica_id for replica in self.replicas]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"replica ids must be unique: {', '.join(duplicates)}")
        return self


def load_router_config(path: Path | None, overrides: dict[str, Any] | None = None) -> RouterConfig:
    settings: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as error:
            raise RouterConfigError(f"cannot read {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise RouterConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise RouterConfigError(f"{path} must hold a mapping of settings")
        settings.update(loaded or {})
    settings.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return RouterConfig.model_validate(settings)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise RouterConfigError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
