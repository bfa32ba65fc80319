"""A request as the engine sees it: an immutable spec in, a mutable sequence state inside."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 256
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What a client asked for. ``predicted_output_tokens`` feeds memory-aware and SJF queues."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    arrival_time: float
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    predicted_output_tokens: int | None = None
    extra_keys: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id!r} has an empty prompt")


class RequestStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )


@dataclass(eq=False, slots=True)
class Sequence:
    """Engine-side state of one request; owned and mutated only by the scheduler.

    ``block_ids`` changes only through :class:`KVCacheManager`, which drops the cached
    :meth:`block_table` whenever it does.
    """

    spec: RequestSpec
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_preemptions: int = 0
    arrival_order: int = 0
    idle_since_step: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    promoted_until_step: int = 0
    request_id: str = field(init=False, repr=False)
    num_prompt_tokens: int = field(init=False, repr=False)
    block_table_cache: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Read on every step: plain attributes rather than properties over the spec.
        self.request_id = self.spec.request_id
        self.num_prompt_tokens = len(self.spec.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def remaining_prefill_tokens(self) -> int:
        return max(0, self.num_prompt_tokens - self.num_computed_tokens)

    def block_table(self) -> tuple[int, ...]:
        """``block_ids`` as a tuple, shared by every step until the table changes."""
        table = self.block_table_cache
        if table is None:
            table = self.block_table_cache = tuple(self.block_ids)
        return table

    def token_ids(self) -> list[int]:
        return [*self.spec.prompt_token_ids, *self.output_token_ids]

    def token_slice(self, begin: int, end: int) -> tuple[int, ...]:
        prompt = self.spec.prompt_token_ids
        split = len(prompt)
        if end <= split:
            return prompt[begin:end]
        outputs = tuple(self.output_token_ids[max(0, begin - split) : end - split])
        return prompt[begin:] + outputs if begin < split else outputs
