"""Simulated fleets: which GPUs serve which model, from a named preset or a YAML file.

A YAML fleet::

    model: llama-3.1-8b
    engine: {max_num_seqs: 256}      # EngineConfig fields shared by every replica (optional)
    replicas:
      - {gpu: h100-80gb, count: 2}
      - {gpu: v100-32gb, count: 2, tier: edge}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protos.snapshot import Tier
from replica_agent.sim_replica import SimReplica, build_sim_replica
from router.state.replica import ReplicaDescriptor

DEFAULT_MODEL = "llama-3.1-8b"
# Long enough for the Mooncake traces' prompts; still capped by each replica's KV capacity.
DEFAULT_MAX_MODEL_LEN = 32768


class ReplicaGroup(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu: str
    count: int = Field(default=1, gt=0)
    tier: Tier = Tier.CLOUD
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)


class FleetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "fleet"
    model: str = DEFAULT_MODEL
    replicas: tuple[ReplicaGroup, ...] = Field(min_length=1)
    engine: dict[str, Any] = Field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(group.count for group in self.replicas)


def _preset(name: str, *groups: tuple[str, int]) -> FleetSpec:
    return FleetSpec(name=name, replicas=tuple(ReplicaGroup(gpu=gpu, count=n) for gpu, n in groups))


PRESETS: Mapping[str, FleetSpec] = MappingProxyType(
    {
        "hetero8": _preset("hetero8", ("h100-80gb", 2), ("a100-80gb", 4), ("v100-32gb", 2)),
        "homo8": _preset("homo8", ("a100-80gb", 8)),
    }
)


class FleetError(ValueError):
    pass


def load_fleet(name_or_path: str) -> FleetSpec:
    """A preset by name, else a YAML file; FleetError when it is neither or is malformed."""
    preset = PRESETS.get(name_or_path)
    if preset is not None:
        return preset
    path = Path(name_or_path)
    if not path.is_file():
        raise FleetError(f"{name_or_path!r} is neither a fleet preset ({', '.join(PRESETS)}) nor a file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise FleetError(f"{path}: not YAML: {error}") from None
    if not isinstance(raw, dict):
        raise FleetError(f"{path}: a fleet is a mapping with 'replicas'")
    raw.setdefault("name", path.stem)
    try:
        return FleetSpec.model_validate(raw)
    except ValidationError as error:
        raise FleetError(f"{path}: {error}") from None


@dataclass(frozen=True, slots=True)
class FleetMember:
    descriptor: ReplicaDescriptor
    replica: SimReplica


def build_fleet(spec: FleetSpec, seed: int = 0) -> list[FleetMember]:
    """One cost-model replica per GPU, ids ``<gpu>-<n>``; engines record cache events so the
    router's prefix index sees what they cache, and allow ``DEFAULT_MAX_MODEL_LEN`` unless the
    fleet's ``engine`` settings say otherwise."""
    settings = {"record_cache_events": True, "max_model_len": DEFAULT_MAX_MODEL_LEN, **spec.engine}
    members: list[FleetMember] = []
    for group in spec.replicas:
        for _ in range(group.count):
            replica_id = f"{group.gpu}-{len(members)}"
            replica = build_sim_replica(
                group.gpu,
                spec.model,
                replica_id=replica_id,
                tier=group.tier,
                seed=seed,
                gpu_memory_utilization=group.gpu_memory_utilization,
                **settings,
            )
            members.append(FleetMember(describe(replica), replica))
    return members


def describe(replica: SimReplica) -> ReplicaDescriptor:
    """What the router is told about a simulated replica when it joins."""
    identity, config = replica.engine.identity, replica.engine.config
    return ReplicaDescriptor(
        replica_id=identity.replica_id,
        model=identity.model,
        gpu=identity.gpu,
        tier=identity.tier.value,
        address=f"sim://{identity.replica_id}",
        max_model_len=config.max_model_len,
        block_size=config.block_size,
    )
