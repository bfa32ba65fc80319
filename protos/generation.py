"""Generation requests and their streamed answers as every front door and backend sees them.

Shared by the replica agent (its HTTP and gRPC front doors, its backends) and the router (which
speaks the same OpenAI API and forwards to replicas), so both validate and report alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class AgentError(Exception):
    """A request the agent refuses; ``kind`` picks the HTTP status and gRPC code."""

    kind = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(AgentError):
    kind = "invalid_request"


class ModelNotFoundError(AgentError):
    kind = "model_not_found"


class DrainingError(AgentError):
    kind = "unavailable"


class OverloadedError(AgentError):
    """Every candidate is past its queue or KV threshold: the client should come back later."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoReplicaError(AgentError):
    """No healthy replica serves the request's model right now."""

    kind = "no_replica"


class UpstreamTimeoutError(AgentError):
    """The replica did not answer (connect, first token or idle stream) within its timeout."""

    kind = "timeout"


class UpstreamError(AgentError):
    """The remote server behind a sidecar failed or could not be reached."""

    kind = "upstream"


@dataclass(frozen=True, slots=True)
class GenerateInput:
    """One generation request, whatever front door it came through.

    Exactly one of ``prompt``, ``messages`` and ``prompt_token_ids`` carries the input; engine
    backends tokenize text themselves, remote backends forward text as it is.
    """

    request_id: str
    model: str
    max_tokens: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    priority: int = 0
    predicted_output_tokens: int | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    user: str | None = None  # the OpenAI ``user`` field: the router's tenant key for length prediction

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class GenerateEvent:
    """A piece of one answer. The last event has ``finished`` set, a finish reason and usage.

    ``time`` is agent wall-clock (Unix seconds); ``elapsed_s`` counts from the request's arrival.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    time: float
    elapsed_s: float
    finished: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class AgentInfo:
    replica_id: str
    model: str
    gpu: str
    tier: str
    executor: str
    block_size: int
    num_blocks: int
    max_model_len: int
    hash_seed: int
    version: str
    tokenizer: str
    served_model_names: tuple[str, ...] = field(default=())

    def serves(self, model: str) -> bool:
        return model in (self.model, *self.served_model_names)


# The slots' own setters: a frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once
# per field, which costs twice as much, and a relay builds one event per streamed chunk.
_new_object = object.__new__


def _slot_setter(name: str) -> Callable[[GenerateEvent, Any], None]:
    setter: Callable[[GenerateEvent, Any], None] = vars(GenerateEvent)[name].__set__
    return setter


_set_request_id = _slot_setter("request_id")
_set_token_ids = _slot_setter("token_ids")
_set_text = _slot_setter("text")
_set_time = _slot_setter("time")
_set_elapsed_s = _slot_setter("elapsed_s")
_set_finished = _slot_setter("finished")
_set_finish_reason = _slot_setter("finish_reason")
_set_usage = _slot_setter("usage")


def output_event(
    request_id: str, token_ids: tuple[int, ...], text: str, time: float, elapsed_s: float
) -> GenerateEvent:
    """``GenerateEvent(request_id, token_ids, text, time, elapsed_s)`` (an unfinished one), built faster."""
    event: GenerateEvent = _new_object(GenerateEvent)
    _set_request_id(event, request_id)
    _set_token_ids(event, token_ids)
    _set_text(event, text)
    _set_time(event, time)
    _set_elapsed_s(event, elapsed_s)
    _set_finished(event, False)
    _set_finish_reason(event, None)
    _set_usage(event, None)
    return event
