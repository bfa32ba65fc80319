"""One replica whose GPU is the calibrated cost model: an engine sized from the GPU's KV capacity
plus the executor that times its steps. Benchmarks, the CLI and the simulator build replicas here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos.block_hash import DEFAULT_BLOCK_SIZE
from protos.snapshot import Tier
from replica_agent.engine import Engine, EngineConfig, ReplicaIdentity
from replica_agent.executors.cost_executor import CostModelExecutor
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import get_gpu_profile, get_model_profile


@dataclass(frozen=True)
class SimReplica:
    engine: Engine
    executor: CostModelExecutor
    cost_model: StepCostModel


def build_sim_replica(
    gpu: str,
    model: str,
    replica_id: str = "replica-0",
    tier: Tier = Tier.CLOUD,
    seed: int = 0,
    gpu_memory_utilization: float = 0.9,
    **engine_settings: Any,
) -> SimReplica:
    """``engine_settings`` are EngineConfig fields; ``num_blocks`` defaults to the GPU's KV capacity."""
    model_profile = get_model_profile(model)
    cost_model = StepCostModel(get_gpu_profile(gpu), model_profile)
    settings = dict(engine_settings)
    block_size = int(settings.get("block_size", DEFAULT_BLOCK_SIZE))
    settings.setdefault(
        "num_blocks", cost_model.kv_capacity_blocks(block_size, gpu_memory_utilization=gpu_memory_utilization)
    )
    config = EngineConfig.model_validate(settings)
    engine = Engine(config, ReplicaIdentity(replica_id=replica_id, model=model, gpu=gpu, tier=tier))
    executor = CostModelExecutor(
        cost_model, vocab_size=model_profile.vocab_size, eos_token_id=config.eos_token_id, seed=seed
    )
    return SimReplica(engine, executor, cost_model)
