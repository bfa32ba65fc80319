"""Pure translations for the vLLM backend, testable without vLLM.

* vLLM's scheduler/iteration stats → :class:`VllmSchedulerStats` (read with ``getattr`` and fallbacks,
  since those classes are not a stable interface) → :class:`ReplicaSnapshot`.
* vLLM's cumulative ``RequestOutput`` → the deltas the agent streams.
* A request → the checks it must pass, its prompt token ids, its ``SamplingParams`` fields; the
  started engine's settings → :class:`AgentInfo`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from protos.snapshot import ReplicaSnapshot
from protos.text import render_chat
from replica_agent.engine.engine import ReplicaIdentity
from replica_agent.service.backend import AgentInfo, GenerateInput, InvalidRequestError, Usage

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", "repetition": "stop"}


# -- scheduler stats -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VllmSchedulerStats:
    """vLLM's stats folded together: gauges hold the latest value, counters the total since start."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0
    # None until vLLM reports prefix-cache stats at all.
    prefix_cache_queries: int | None = None
    prefix_cache_hits: int | None = None
    preemptions_total: int = 0

    @property
    def computed_prefill_tokens(self) -> int | None:
        """Prompt tokens the engine computed (queried minus found cached), recomputations after a
        preemption included; None while vLLM has counted no query (no stats, or prefix caching off)."""
        if not self.prefix_cache_queries:
            return None
        return max(0, self.prefix_cache_queries - (self.prefix_cache_hits or 0))


def _number(source: object, names: Sequence[str]) -> float | None:
    for name in names:
        value = getattr(source, name, None)
        if isinstance(value, int | float):
            return float(value)
    return None


def _count(source: object, name: str, default: int = 0) -> int:
    value = _number(source, (name,))
    return default if value is None else int(value)


def fold_stats(
    previous: VllmSchedulerStats, scheduler_stats: object | None, iteration_stats: object | None
) -> VllmSchedulerStats:
    """``previous`` updated with one ``StatLoggerBase.record`` call's arguments.

    Reads ``kv_cache_usage`` (``gpu_cache_usage`` before vLLM 0.10), per-interval prefix-cache counts
    (``preempted_*`` as well where vLLM splits them out) and ``num_preempted_reqs``; anything
    missing keeps its previous value.
    """
    stats = previous
    if scheduler_stats is not None:
        usage = _number(scheduler_stats, ("kv_cache_usage", "gpu_cache_usage"))
        queries, hits = stats.prefix_cache_queries, stats.prefix_cache_hits
        prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
        if prefix is not None:
            queries = (queries or 0) + _count(prefix, "queries") + _count(prefix, "preempted_queries")
            hits = (hits or 0) + _count(prefix, "hits") + _count(prefix, "preempted_hits")
        stats = dataclasses.replace(
            stats,
            num_running_reqs=_count(scheduler_stats, "num_running_reqs", stats.num_running_reqs),
            num_waiting_reqs=_count(scheduler_stats, "num_waiting_reqs", stats.num_waiting_reqs),
            kv_cache_usage=stats.kv_cache_usage if usage is None else min(1.0, max(0.0, usage)),
            prefix_cache_queries=queries,
            prefix_cache_hits=hits,
        )
    if iteration_stats is not None:
        preempted = _count(iteration_stats, "num_preempted_reqs")
        stats = dataclasses.replace(stats, preemptions_total=stats.preemptions_total + preempted)
    return stats


# -- requests this backend submitted ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InFlightRequest:
    prompt_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0
    started: bool = False  # the first token is out, so the prompt has been prefilled


@dataclass(frozen=True, slots=True)
class CumulativeOutput:
    """What one vLLM ``RequestOutput`` says so far (``token_ids`` is vLLM's list, not a copy)."""

    token_ids: Sequence[int] = ()
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    num_cached_tokens: int | None = None


def advance(request: InFlightRequest, output: CumulativeOutput) -> tuple[InFlightRequest, int, int]:
    """``request`` after ``output``, with the prefill and generated tokens ``output`` adds."""
    generated = max(0, len(output.token_ids) - request.output_tokens)
    cached = request.cached_tokens if output.num_cached_tokens is None else output.num_cached_tokens
    starts = not request.started and len(output.token_ids) > 0
    prefilled = max(0, request.prompt_tokens - cached) if starts else 0
    updated = InFlightRequest(
        prompt_tokens=request.prompt_tokens,
        output_tokens=request.output_tokens + generated,
        cached_tokens=cached,
        started=request.started or starts,
    )
    return updated, prefilled, generated


@dataclass(frozen=True, slots=True)
class TokenCounters:
    """Token totals at ``time`` (monotonic seconds); the engine's own prefill count where it has one."""

    time: float
    observed_prefill_tokens: int = 0
    generated_tokens: int = 0
    engine_prefill_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Throughput:
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0


def throughput(samples: Sequence[TokenCounters], window_s: float) -> Throughput:
    """Token rates over the samples in the last ``window_s`` (oldest first)."""
    if len(samples) < 2:
        return Throughput()
    newest = samples[-1]
    oldest = next(s for s in samples if s.time >= newest.time - window_s)
    span = newest.time - oldest.time
    if span <= 0:
        return Throughput()
    if newest.engine_prefill_tokens is not None and oldest.engine_prefill_tokens is not None:
        prefill = newest.engine_prefill_tokens - oldest.engine_prefill_tokens
    else:
        prefill = newest.observed_prefill_tokens - oldest.observed_prefill_tokens
    generated = newest.generated_tokens - oldest.generated_tokens
    return Throughput(max(0, prefill) / span, max(0, generated) / span)


def snapshot_from_stats(
    stats: VllmSchedulerStats,
    *,
    identity: ReplicaIdentity,
    seq: int,
    now: float,
    num_gpu_blocks: int,
    block_size: int,
    in_flight: Iterable[InFlightRequest] = (),
    rates: Throughput = Throughput(),
    admitted_ids: tuple[str, ...] = (),
    healthy: bool = True,
    draining: bool = False,
) -> ReplicaSnapshot:
    """The snapshot routers see. vLLM reports no free-but-cached block count, so ``cached_blocks`` is 0."""
    requests = list(in_flight)
    used = min(num_gpu_blocks, max(0, round(stats.kv_cache_usage * num_gpu_blocks)))
    # A request submitted since vLLM's last stats is not in its counts yet: it is waiting.
    unseen = len(requests) - stats.num_running_reqs - stats.num_waiting_reqs
    return ReplicaSnapshot(
        replica_id=identity.replica_id,
        model=identity.model,
        gpu=identity.gpu,
        tier=identity.tier,
        seq=seq,
        time=now,
        total_blocks=num_gpu_blocks,
        free_blocks=num_gpu_blocks - used,
        cached_blocks=0,
        block_size=block_size,
        num_running=stats.num_running_reqs,
        num_waiting=stats.num_waiting_reqs + max(0, unseen),
        waiting_prefill_tokens=sum(r.prompt_tokens for r in requests if not r.started),
        running_context_tokens=sum(r.prompt_tokens + r.output_tokens for r in requests if r.started),
        preemptions_total=stats.preemptions_total,
        prefill_tokens_per_s=rates.prefill_tokens_per_s,
        decode_tokens_per_s=rates.decode_tokens_per_s,
        admitted_ids=admitted_ids,
        healthy=healthy,
        draining=draining,
    )


# -- outputs ---------------------------------------------------------------------------------------
def finish_reason(reason: str | None) -> str:
    """vLLM's finish reason as the agent reports it: stop, length or abort (errors included)."""
    return FINISH_REASONS.get(reason or "", "abort")


def cumulative_from_request_output(output: object) -> CumulativeOutput:
    """The first completion of a vLLM ``RequestOutput`` (the agent never asks for ``n > 1``)."""
    completions = getattr(output, "outputs", None) or ()
    first = completions[0] if completions else None
    reason = getattr(first, "finish_reason", None)
    cached = getattr(output, "num_cached_tokens", None)
    return CumulativeOutput(
        token_ids=getattr(first, "token_ids", None) or (),
        text=getattr(first, "text", None) or "",
        finished=bool(getattr(output, "finished", False)),
        finish_reason=None if reason is None else str(reason),
        num_cached_tokens=cached if isinstance(cached, int) else None,
    )


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """How much of a cumulative output has been passed on already."""

    tokens: int = 0
    chars: int = 0


@dataclass(frozen=True, slots=True)
class OutputDelta:
    token_ids: tuple[int, ...]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None


def output_delta(
    position: StreamPosition, output: CumulativeOutput, prompt_tokens: int
) -> tuple[OutputDelta, StreamPosition]:
    """What ``output`` adds after ``position``, and the position after it.

    vLLM's cumulative text only grows while no stop strings are set (the agent sets none), so the
    new text is what lies past the characters already sent.
    """
    tokens = tuple(output.token_ids[position.tokens :])
    text = output.text[position.chars :]
    after = StreamPosition(max(position.tokens, len(output.token_ids)), max(position.chars, len(output.text)))
    if not output.finished:
        return OutputDelta(tokens, text), after
    usage = Usage(prompt_tokens, after.tokens, output.num_cached_tokens or 0)
    return OutputDelta(tokens, text, True, finish_reason(output.finish_reason), usage), after


# -- requests --------------------------------------------------------------------------------------
def check_lengths(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """The same limits as the built-in engine: the prompt and the whole answer must fit."""
    if prompt_tokens >= max_model_len:
        raise InvalidRequestError(
            f"the prompt has {prompt_tokens} tokens, over this model's maximum context length of "
            f"{max_model_len} tokens less one for the answer",
            "prompt",
        )
    if prompt_tokens + max_tokens > max_model_len:
        raise InvalidRequestError(
            f"this model's maximum context length is {max_model_len} tokens; the request asks for "
            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} for the answer). "
            "Shorten the prompt or lower max_tokens.",
            "max_tokens",
        )


def check_sampling(request: GenerateInput, vocab_size: int) -> None:
    if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
        raise InvalidRequestError(f"temperature must be in [0, 2], got {request.temperature}", "temperature")
    if request.top_p is not None and not 0.0 < request.top_p <= 1.0:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {request.top_p}", "top_p")
    check_token_ids(request.stop_token_ids, vocab_size, "stop")


def check_token_ids(token_ids: Sequence[int], vocab_size: int, what: str) -> None:
    bad = next((t for t in token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"{what} token id {bad} is outside the vocabulary [0, {vocab_size})")


def sampling_kwargs(request: GenerateInput) -> dict[str, object]:
    """Keyword arguments for vLLM's ``SamplingParams``; unset options keep vLLM's defaults."""
    kwargs: dict[str, object] = {
        "max_tokens": request.max_tokens,
        "ignore_eos": request.ignore_eos,
        "stop_token_ids": list(request.stop_token_ids),
    }
    optional = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed}
    kwargs.update({name: value for name, value in optional.items() if value is not None})
    return kwargs


def info_from_vllm_config(info: AgentInfo, vllm_config: Any, tokenizer: Any) -> tuple[AgentInfo, int]:
    """``info`` with what the started engine settled on, and the tokenizer's vocabulary size."""
    cache = getattr(vllm_config, "cache_config", None)
    model = getattr(vllm_config, "model_config", None)
    try:
        vocab = len(tokenizer)  # Hugging Face tokenizers count added tokens here, not in vocab_size
    except TypeError:
        vocab = int(getattr(tokenizer, "vocab_size", 0))
    updated = dataclasses.replace(
        info,
        num_blocks=int(getattr(cache, "num_gpu_blocks", None) or info.num_blocks),
        block_size=int(getattr(cache, "block_size", None) or info.block_size),
        max_model_len=int(getattr(model, "max_model_len", None) or info.max_model_len),
        tokenizer=str(getattr(tokenizer, "name_or_path", None) or info.tokenizer),
    )
    return updated, vocab


def prompt_token_ids(request: GenerateInput, tokenizer: Any, vocab_size: int) -> list[int]:
    """The prompt as token ids: given ids as they are, text through the model's tokenizer, chat
    messages through its chat template (the agent's fixed template when the model has none)."""
    if sum((request.prompt is not None, bool(request.messages), bool(request.prompt_token_ids))) != 1:
        raise InvalidRequestError("give exactly one of prompt, messages or prompt token ids", "prompt")
    if request.prompt_token_ids:
        check_token_ids(request.prompt_token_ids, vocab_size, "prompt")
        return list(request.prompt_token_ids)
    if request.prompt is not None:
        text, special_tokens, param = request.prompt, True, "prompt"
    elif getattr(tokenizer, "chat_template", None):
        conversation = [{"role": role, "content": content} for role, content in request.messages]
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # the template's own checks, e.g. roles that must alternate
            raise InvalidRequestError(
                f"the chat template rejects these messages: {error}", "messages"
            ) from None
        special_tokens, param = False, "messages"  # templates write their own BOS
    else:
        text, special_tokens, param = render_chat(request.messages), True, "messages"
    if not text:
        raise InvalidRequestError("the prompt is empty", param)
    return list(tokenizer.encode(text, add_special_tokens=special_tokens))
