"""The OpenAI streaming dialect as a client speaks it to an upstream server (vLLM, SGLang, a
fleetroute agent): request bodies, server-sent events, chunks, usage and error bodies.

Shared by the agent's remote backend and the router's HTTP replica client.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from protos.generation import AgentError, GenerateInput, InvalidRequestError, UpstreamError, Usage


def upstream_error(status: int, body: str) -> AgentError:
    """Upstream's refusal: its own message for a client error, an ``UpstreamError`` otherwise.
    Reads both ``{"error": {...}}`` and older vLLM's flat ``{"object": "error", "message": ...}``."""
    message, param = body.strip()[:500], None
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
            param = error["param"] if isinstance(error.get("param"), str) else None
    if 400 <= status < 500 and status not in (408, 429):  # 408/429: overload, worth retrying elsewhere
        return InvalidRequestError(message or f"the upstream server refused the request ({status})", param)
    return UpstreamError(f"the upstream server answered HTTP {status}: {message}")


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
            lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


def parse_chunk(data: str) -> StreamChunk:
    """One ``chat.completion.chunk`` or ``text_completion`` chunk; an error object raises."""
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("a stream chunk is not a JSON object")
    if isinstance(chunk.get("error"), dict):
        code = chunk["error"].get("code")
        raise upstream_error(code if isinstance(code, int) else 500, data)
    usage, choices = chunk.get("usage"), chunk.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    ids, reason = choice.get("token_ids"), choice.get("finish_reason")
    return StreamChunk(
        text=text if isinstance(text, str) else "",
        token_ids=tuple(ids) if isinstance(ids, list) and all(isinstance(t, int) for t in ids) else (),
        finish_reason=reason if isinstance(reason, str) else None,
        usage=_usage(usage) if isinstance(usage, dict) else None,
    )


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"), cached)
    prompt, completion, cached = (n if isinstance(n, int) else 0 for n in counts)
    return Usage(prompt, completion, cached)


def request_body(request: GenerateInput, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if request.messages:
        body["messages"] = [{"role": role, "content": content} for role, content in request.messages]
    else:
        body["prompt"] = list(request.prompt_token_ids) if request.prompt_token_ids else request.prompt
    optional = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed}
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extra sampling parameters
    if request.stop_token_ids:
        body["stop_token_ids"] = list(request.stop_token_ids)
    return body
