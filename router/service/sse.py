"""OpenAI's streaming HTTP dialect: request bodies, server-sent events, stream chunks
(``chat.completion.chunk`` and ``text_completion``), reading one streamed answer under its timeouts,
error bodies, and what each failure means for the router.

Reads both ``{"error": {"message": ...}}`` and older vLLM's flat ``{"object": "error", "message": ...}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from protos.generation import GenerateInput, Usage
from router.service.replica_client import ReplicaCallError

DONE = "[DONE]"


class StreamedError(Exception):
    """An error object the server sent inside an event stream instead of a chunk."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class StreamChunk:
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None

    @property
    def has_output(self) -> bool:
        return bool(self.text or self.token_ids)


def request_body(request: GenerateInput, model: str, *, return_token_ids: bool) -> dict[str, Any]:
    """A streaming ``/v1/chat/completions`` body for a chat request, ``/v1/completions`` otherwise,
    asking for a final usage chunk. ``ignore_eos``, ``stop_token_ids`` and ``return_token_ids`` are
    vLLM's extensions; servers that do not know them ignore them."""
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if request.is_chat:
        body["messages"] = [{"role": role, "content": content} for role, content in request.messages]
    else:
        body["prompt"] = list(request.prompt_token_ids) if request.prompt_token_ids else request.prompt or ""
    optional = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed}
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.ignore_eos:
        body["ignore_eos"] = True
    if request.stop_token_ids:
        body["stop_token_ids"] = list(request.stop_token_ids)
    if return_token_ids:
        body["return_token_ids"] = True
    return body


def model_cards(text: str) -> dict[str, dict[str, Any]]:
    """The cards of a ``/v1/models`` listing by model id; ``ValueError`` when it is not one."""
    listing = json.loads(text)
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"not a model list: {text[:200]}")
    return {
        card["id"]: card for card in entries if isinstance(card, dict) and isinstance(card.get("id"), str)
    }


def request_headers(request: GenerateInput) -> dict[str, str]:
    """The request id and W3C trace context as HTTP headers."""
    headers = {"X-Request-Id": request.request_id}
    if request.traceparent:
        headers["traceparent"] = request.traceparent
    if request.tracestate:
        headers["tracestate"] = request.tracestate
    return headers


async def sse_data(lines: AsyncIterable[bytes]) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    pending: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if pending:
                yield "\n".join(pending)
            pending = []
        elif line.startswith("data:"):
            pending.append(line[5:].removeprefix(" "))
    if pending:
        yield "\n".join(pending)


async def answer_chunks(
    body: AsyncIterable[bytes],
    *,
    replica_id: str,
    opened_at: float,
    first_token_timeout_s: float,
    idle_timeout_s: float,
    aborted: Callable[[], bool],
) -> AsyncGenerator[StreamChunk, None]:
    """The chunks of one streamed answer until ``[DONE]``, the end of the body, or ``aborted()``.

    The first output must come within ``first_token_timeout_s`` of ``opened_at`` (loop time; a chat
    stream's opening role-only chunk does not count), each later chunk within ``idle_timeout_s``.
    Failures raise :class:`ReplicaCallError`, retryable until output has flowed."""
    loop, started = asyncio.get_running_loop(), False
    events = sse_data(body)
    try:
        while not aborted():
            wait_s = idle_timeout_s if started else first_token_timeout_s
            try:
                async with asyncio.timeout_at((loop.time() if started else opened_at) + wait_s):
                    data = await anext(events, None)
                if data is None or data.strip() == DONE or aborted():
                    return
                chunk = parse_chunk(data)
            except TimeoutError:
                silent = f"no {'chunk' if started else 'token'} within {wait_s:g} s"
                raise stream_failure(replica_id, silent, started=started, kind="timeout") from None
            except StreamedError as error:
                if started:
                    raise stream_failure(replica_id, error.message, started=True) from None
                raise http_error(replica_id, error.status, error.message) from None
            except (aiohttp.ClientError, OSError, ValueError) as error:
                if aborted():
                    return
                raise stream_failure(
                    replica_id, f"the stream broke off: {error!r}", started=started
                ) from None
            started = started or chunk.has_output
            yield chunk
    finally:
        await events.aclose()


def parse_chunk(data: str) -> StreamChunk:
    """One stream chunk; :class:`StreamedError` for an error object, ``ValueError`` for anything
    that is not a chunk."""
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("a stream chunk is not a JSON object")
    if isinstance(chunk.get("error"), dict) or chunk.get("object") == "error":
        error = chunk.get("error", chunk)
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        raise StreamedError(error_message(data), status)
    choices = chunk.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    token_ids = choice.get("token_ids")
    reason = choice.get("finish_reason")
    usage = chunk.get("usage")
    return StreamChunk(
        text=text if isinstance(text, str) else "",
        token_ids=tuple(int(t) for t in token_ids) if isinstance(token_ids, list) else (),
        finish_reason=reason if isinstance(reason, str) else None,
        usage=parse_usage(usage) if isinstance(usage, dict) else None,
    )


def parse_usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), int(cached or 0)
    )


def error_message(body: str) -> str:
    """The message of an OpenAI-style error body, or the body itself (shortened) when it has none."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:500]
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return body.strip()[:500]


def http_error(replica_id: str, status: int, body: str) -> ReplicaCallError:
    """A refusal with the server's own message; only faults of the request itself are final."""
    message = error_message(body) or f"HTTP {status}"
    if status == 404:
        return ReplicaCallError(message, retryable=False, kind="model_not_found", status=404)
    if status in (400, 413, 422):
        return ReplicaCallError(message, retryable=False, kind="invalid_request", status=400)
    where = f"replica {replica_id} answered HTTP {status}: {message}"
    if status == 429:
        return ReplicaCallError(where, retryable=True, kind="overloaded", status=429)
    if status == 408 or status >= 500:
        return ReplicaCallError(where, retryable=True, kind="unavailable", status=503)
    # 401, 403 and the like say the router is misconfigured for this replica, not that the request is bad.
    return ReplicaCallError(where, retryable=True, kind="upstream", status=502)


def stream_failure(
    replica_id: str, detail: str, *, started: bool, kind: str = "upstream"
) -> ReplicaCallError:
    """An answer that failed or went quiet: another replica may take it until output has flowed."""
    status = 504 if kind == "timeout" else 502
    return ReplicaCallError(
        f"replica {replica_id}: {detail}", retryable=not started, kind=kind, status=status
    )
