"""OpenAI's streaming HTTP dialect as a client speaks it to a server (vLLM, SGLang, a fleetroute
agent): request bodies and headers, server-sent events, stream chunks (``chat.completion.chunk`` and
``text_completion``), usage and error bodies. No I/O and no error policy: callers decide what a
refusal means (the router retries elsewhere, a sidecar reports it to its client).

Reads both ``{"error": {"message": ...}}`` and older vLLM's flat ``{"object": "error", "message": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any

from protos.generation import GenerateInput, Usage

DONE = "[DONE]"
# The decoder's C scanner (untyped in typeshed): one JSON value from a position, and where it ended.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


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


def request_body(request: GenerateInput, model: str, *, return_token_ids: bool = False) -> dict[str, Any]:
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


class SseDecoder:
    """Server-sent events from body bytes as they arrive, for readers that take whatever the socket
    has rather than a line at a time: :meth:`feed` returns the ``data`` of every event completed by
    the new bytes, :meth:`finish` what the end of the body completes. Same events as :func:`sse_data`."""

    __slots__ = ("_pending", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._pending: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        if self._rest:
            data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        if not cut:
            return []
        events: list[str] = []
        pending = self._pending
        for raw in data[:cut].decode("utf-8").split("\n")[:-1]:
            line = raw.rstrip("\r")
            if not line:
                if pending:
                    events.append("\n".join(pending))
                    pending.clear()
            elif line.startswith("data:"):
                pending.append(line[6:] if line.startswith("data: ") else line[5:])
        return events

    def finish(self) -> list[str]:
        rest, self._rest = self._rest, b""
        events = self.feed(rest + b"\n") if rest else []
        if self._pending:
            events.append("\n".join(self._pending))
            self._pending.clear()
        return events


def parse_chunk(data: str) -> StreamChunk:
    """One stream chunk; :class:`StreamedError` for an error object, ``ValueError`` for anything
    that is not a chunk."""
    chunk = _json_object(data)
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
        text if isinstance(text, str) else "",
        tuple(map(int, token_ids)) if isinstance(token_ids, list) else (),
        reason if isinstance(reason, str) else None,
        parse_usage(usage) if isinstance(usage, dict) else None,
    )


def _json_object(data: str) -> dict[str, Any]:
    # The C scanner alone where the data is one bare object: json.loads adds two regex passes.
    try:
        value, end = _scan_json(data, 0)
    except StopIteration:
        value, end = None, -1
    if end != len(data):
        value = json.loads(data)  # whitespace around it, or the error message for what it is
    if not isinstance(value, dict):
        raise ValueError("a stream chunk is not a JSON object")
    return value


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
