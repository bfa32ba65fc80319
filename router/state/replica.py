"""What the router is told about a replica when it joins the fleet (static configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protos.block_hash import DEFAULT_BLOCK_SIZE
from protos.snapshot import Tier

Transport = Literal["agent", "http"]
TRANSPORTS: tuple[Transport, ...] = ("agent", "http")


@dataclass(frozen=True, slots=True)
class ReplicaDescriptor:
    """One replica: identity, where to reach it and how.

    ``transport`` is ``"agent"`` for a fleetroute replica agent (gRPC, pushes snapshots) or
    ``"http"`` for a plain OpenAI-compatible server (load known only if its ``/metrics`` are
    scraped into snapshots). ``gpu`` and ``model_profile`` (the model name when empty) name the
    GPU and model profiles of the cost model; unknown names leave the replica on default speeds.
    ``max_model_len`` is 0 when unknown. ``expects_snapshots`` is False for a backend nobody
    scrapes: it is then never considered stale.
    """

    replica_id: str
    model: str
    gpu: str
    tier: str
    address: str
    transport: Transport = "agent"
    max_model_len: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    model_profile: str = ""
    expects_snapshots: bool = True

    def __post_init__(self) -> None:
        if not self.replica_id:
            raise ValueError("replica_id must not be empty")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.tier not in {t.value for t in Tier}:
            raise ValueError(f"tier must be one of {[t.value for t in Tier]}, got {self.tier!r}")
        if self.max_model_len < 0:
            raise ValueError(f"max_model_len must be non-negative, got {self.max_model_len}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")

    @property
    def cost_profile(self) -> str:
        """The model profile name the cost model uses."""
        return self.model_profile or self.model
