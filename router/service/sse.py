"""Reading one streamed answer from an OpenAI-compatible replica under its timeouts, and what each
failure means for the router (retry elsewhere or give up). The dialect itself is
:mod:`protos.openai_wire`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import aiohttp

from protos.openai_wire import (
    DONE as DONE,
)
from protos.openai_wire import (
    SseDecoder as SseDecoder,
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


class Body(Protocol):
    async def readany(self, deadline: float | None = None) -> bytes:
        """The bytes that came since the last call, waiting for some; ``b""`` at the end;
        ``TimeoutError`` when none came by ``deadline`` (loop time)."""
        ...


class AnswerReader:
    """The chunks of one streamed answer until ``[DONE]``, the end of the body, or ``aborted()``,
    batch by batch: each :meth:`next_batch` returns every chunk that arrived together (one socket
    read), so a relay can pass them on with one write.

    The first output must come within ``first_token_timeout_s`` of ``opened_at`` (loop time; a chat
    stream's opening role-only chunk does not count), each later read within ``idle_timeout_s``.
    Failures raise :class:`ReplicaCallError`, retryable until output has flowed; one behind good
    chunks in the same read is raised by the next call, after those chunks were handed out."""

    __slots__ = ("_aborted", "_body", "_decoder", "_failure", "_first_s", "_idle_s", "_loop",
                 "_opened_at", "_replica_id", "ended", "started")  # fmt: skip

    def __init__(
        self,
        body: Body,
        *,
        replica_id: str,
        opened_at: float,
        first_token_timeout_s: float,
        idle_timeout_s: float,
        aborted: Callable[[], bool],
    ) -> None:
        self._body, self._replica_id, self._aborted = body, replica_id, aborted
        self._opened_at, self._first_s, self._idle_s = opened_at, first_token_timeout_s, idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._decoder = SseDecoder()
        self._failure: ReplicaCallError | None = None
        self.started = False  # some output has come
        self.ended = False  # [DONE] or the end of the body

    async def next_batch(self) -> list[StreamChunk] | None:
        """The chunks of the next read (at least one), or None at the end or once aborted."""
        if self._failure is not None:
            raise self._failure
        if self.ended or self._aborted():
            return None
        wait_s = self._idle_s if self.started else self._first_s
        deadline = (self._loop.time() if self.started else self._opened_at) + wait_s
        while True:
            try:
                data = await self._body.readany(deadline)
                events = self._decoder.feed(data) if data else self._decoder.finish()
            except TimeoutError:
                silent = f"no {'chunk' if self.started else 'token'} within {wait_s:g} s"
                raise stream_failure(self._replica_id, silent, started=self.started, kind="timeout") from None
            except (aiohttp.ClientError, OSError, ValueError) as error:
                if self._aborted():
                    return None
                raise self._broken(error) from None
            if self._aborted():
                return None
            self.ended = not data
            if events or self.ended:
                break
        chunks = self._parse(events)
        if self._failure is not None and not chunks:
            raise self._failure
        return chunks if chunks or not self.ended else None

    def _parse(self, events: list[str]) -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        for data in events:
            if not data.startswith("{") and data.strip() == DONE:
                self.ended = True
                break
            try:
                chunk = parse_chunk(data)
            except StreamedError as error:
                if self.started:
                    self._failure = stream_failure(self._replica_id, error.message, started=True)
                else:
                    self._failure = http_error(self._replica_id, error.status, error.message)
                break
            except ValueError as error:
                self._failure = self._broken(error)
                break
            self.started = self.started or chunk.has_output
            chunks.append(chunk)
        return chunks

    def _broken(self, error: BaseException) -> ReplicaCallError:
        detail = f"the stream broke off: {error!r}"
        return stream_failure(self._replica_id, detail, started=self.started)


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
