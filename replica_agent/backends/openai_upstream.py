"""The OpenAI streaming dialect (:mod:`protos.openai_wire`) with the sidecar's error policy: a
refusal of the request itself reaches the client with the server's own message, anything else is an
upstream failure."""

from __future__ import annotations

import json

from protos.generation import AgentError, InvalidRequestError, UpstreamError
from protos.openai_wire import (
    StreamChunk as StreamChunk,
)
from protos.openai_wire import (
    StreamedError,
    error_message,
)
from protos.openai_wire import parse_chunk as parse_wire_chunk
from protos.openai_wire import (
    request_body as request_body,
)
from protos.openai_wire import (
    sse_data as sse_data,
)


def upstream_error(status: int, body: str) -> AgentError:
    """Upstream's refusal: its own message for a client error, an ``UpstreamError`` otherwise."""
    message, param = error_message(body), None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("param"), str):
        param = error["param"]
    if 400 <= status < 500 and status not in (408, 429):  # 408/429: overload, worth retrying elsewhere
        return InvalidRequestError(message or f"the upstream server refused the request ({status})", param)
    return UpstreamError(f"the upstream server answered HTTP {status}: {message}")


def parse_chunk(data: str) -> StreamChunk:
    """One stream chunk; an error object in the stream raises the matching :class:`AgentError`."""
    try:
        return parse_wire_chunk(data)
    except StreamedError as error:
        raise upstream_error(error.status, json.dumps({"error": {"message": error.message}})) from None
