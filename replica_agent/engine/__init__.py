"""The replica engine: paged KV blocks, prefix cache, continuous-batching scheduler (pure core)."""

from replica_agent.engine.config import BatchingMode, EngineConfig, QueuePolicyName
from replica_agent.engine.engine import Engine, ReplicaIdentity
from replica_agent.engine.request import RequestSpec, RequestStatus, SamplingParams
from replica_agent.engine.step import RequestOutput, StepPlan, StepResult

__all__ = [
    "BatchingMode",
    "Engine",
    "EngineConfig",
    "QueuePolicyName",
    "ReplicaIdentity",
    "RequestOutput",
    "RequestSpec",
    "RequestStatus",
    "SamplingParams",
    "StepPlan",
    "StepResult",
]
