"""Engine settings, validated once at construction."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protos.block_hash import DEFAULT_BLOCK_SIZE, DEFAULT_HASH_SEED


class QueuePolicyName(StrEnum):
    FCFS = "fcfs"
    PRIORITY = "priority"
    MEMORY_AWARE = "memory_aware"
    PREDICTED_SJF = "predicted_sjf"


class BatchingMode(StrEnum):
    CONTINUOUS = "continuous"
    STATIC = "static"


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    num_blocks: int = Field(gt=0)
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0)
    max_num_seqs: int = Field(default=256, gt=0)
    max_num_batched_tokens: int = Field(default=8192, gt=0)
    max_model_len: int = Field(default=8192, gt=0)
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    queue_policy: QueuePolicyName = QueuePolicyName.FCFS
    batching: BatchingMode = BatchingMode.CONTINUOUS
    hash_seed: int = Field(default=DEFAULT_HASH_SEED, ge=0)
    eos_token_id: int | None = None
    # memory_aware: blocks kept free for the predicted output of admitted requests, as a multiple
    # of the prediction (1.0 = exactly the predicted length); unknown predictions use the default.
    output_reserve_factor: float = Field(default=1.0, ge=0.0)
    default_predicted_output_tokens: int = Field(default=256, gt=0)
    # predicted_sjf: a request that waited this many steps is promoted for ``sjf_promotion_steps``.
    sjf_starvation_steps: int = Field(default=200, gt=0)
    sjf_promotion_steps: int = Field(default=10, gt=0)
    throughput_window_s: float = Field(default=5.0, gt=0.0)
    # Keep the hashes cached/evicted between snapshots (for routers' prefix indexes).
    record_cache_events: bool = False

    @model_validator(mode="after")
    def _check_chunking(self) -> EngineConfig:
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                "without chunked prefill, max_num_batched_tokens must cover max_model_len "
                f"({self.max_num_batched_tokens} < {self.max_model_len})"
            )
        return self
