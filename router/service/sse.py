"""Reading one streamed answer from an OpenAI-compatible replica under its timeouts, and what each
failure means for the router (retry elsewhere or give up). The dialect itself is
:mod:`protos.openai_wire`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable

import aiohttp

from protos.openai_wire import (
    DONE as DONE,
)
from protos.openai_wire import (
    StreamChunk as StreamChunk,
)
from protos.openai_wire import (
    StreamedError as StreamedError,
)
from protos.openai_wire import (
    error_message as error_message,
)
from protos.openai_wire import (
    model_cards as model_cards,
)
from protos.openai_wire import (
    parse_chunk as parse_chunk,
)
from protos.openai_wire import (
    parse_usage as parse_usage,
)
from protos.openai_wire import (
    request_body as request_body,
)
from protos.openai_wire import (
    request_headers as request_headers,
)
from protos.openai_wire import (
    sse_data as sse_data,
)
from router.service.replica_client import ReplicaCallError


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
