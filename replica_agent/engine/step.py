"""What one engine step computes (the plan) and what the executor returns (the result)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SeqShape:
    """One sequence's share of a step: ``new_tokens`` computed on top of ``context_tokens`` cached."""

    new_tokens: int
    context_tokens: int

    @property
    def is_decode(self) -> bool:
        return self.new_tokens == 1 and self.context_tokens > 0


@dataclass(frozen=True, slots=True)
class BatchShape:
    """The shape of a step, all a cost model needs to time it."""

    seqs: tuple[SeqShape, ...]

    @property
    def num_tokens(self) -> int:
        return sum(s.new_tokens for s in self.seqs)


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens ``[start, start + len(token_ids))`` of one request, computed this step.

    ``block_ids`` is the request's whole block table after allocation, so slot ``p`` lives in block
    ``block_ids[p // block_size]`` at offset ``p % block_size``. ``samples`` is true when the chunk
    reaches the end of the known tokens, so the step yields a new token for this request.
    """

    request_id: str
    start: int
    token_ids: tuple[int, ...]
    block_ids: tuple[int, ...]
    is_prefill: bool
    samples: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True, slots=True)
class StepPlan:
    """``padding`` is wasted work a static batch still pays for (padded prompts, finished members
    that keep their decode slot); it costs time but produces nothing."""

    step_id: int
    chunks: tuple[ScheduledChunk, ...]
    preempted_ids: tuple[str, ...] = ()
    padding: tuple[SeqShape, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if c.is_prefill)

    @property
    def num_decode_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if not c.is_prefill)

    def shape(self) -> BatchShape:
        return BatchShape((*(SeqShape(c.num_tokens, c.start) for c in self.chunks), *self.padding))


@dataclass(frozen=True, slots=True)
class StepResult:
    """The executor's answer: one sampled token per sampling chunk, and how long the step took."""

    sampled_token_ids: Mapping[str, int] = field(default_factory=dict)
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What a step produced for one request: new tokens and, at the end, the finish and usage."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    num_preemptions: int = 0
