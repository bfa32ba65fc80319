"""A small HTTP/1.1 client for the router's streamed POSTs to one plain-HTTP replica.

aiohttp's client spends more on a request than the rest of the relay does; the relay needs little
of it: keep-alive connections to one host, a POST with a ready body, the status and headers, then
the body (chunked, sized, or up to the close) as it arrives. TLS, scrapes and custom sessions stay
with aiohttp. Failures are :class:`UpstreamError` (an ``OSError``), as a refused connection is.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping

MAX_HEAD_BYTES = 64 * 1024
MAX_BUFFERED_BYTES = 1024 * 1024  # unread body past this pauses the socket
MAX_IDLE_CONNECTIONS = 1024
# A released connection whose body end has not come yet waits this long for it before it is closed.
TAIL_WAIT_S = 5.0


class UpstreamError(ConnectionError):
    """The connection failed, or the server broke HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One connection and the response being read on it."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._raw = bytearray()  # received, not parsed yet
        self.body = bytearray()  # parsed body bytes, not read yet
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self.error: UpstreamError | None = None
        self.closed = False
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self._mode = "none"  # chunked: "size", "data", "crlf", "trailer"; "length"; "close"
        self._left = 0
        self._release_when_complete = False
        self._tail_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._raw += data
        try:
            self._parse()
        except UpstreamError as error:
            self._fail(error)
            return
        if len(self.body) > MAX_BUFFERED_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._mode == "close" and self.head_done:
            self.complete = True
        elif self.error is None and not self.complete:
            self.error = UpstreamError(f"the server closed the connection{f': {exc}' if exc else ''}")
        self._pool._forget(self)
        self._wake()

    # -- use -----------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise UpstreamError("the connection is closed")
        self._reset()
        self.transport.write(data)

    async def wait(self, deadline: float | None) -> None:
        """Until something happens on the connection; ``TimeoutError`` past ``deadline`` (loop time).

        One timer serves every wait of a response: a later deadline does not re-arm it, it re-arms
        itself when it fires early (a stream's reads each push the deadline a little further)."""
        self._waiter = self._loop.create_future()
        if deadline is not None:
            self._deadline = deadline
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(deadline, self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._deadline = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._deadline == math.inf:
            return  # not waiting, or waiting without a deadline: the next wait arms a timer of its own
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
        else:
            waiter.set_exception(TimeoutError())

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take_body(self) -> bytes:
        data = bytes(self.body)
        self.body.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def release(self) -> None:
        """Back to the pool once the response is read to its end; closed when it cannot be reused."""
        self._stop_timer()
        if self.closed or self.error is not None or not self.keep_alive:
            self.close()
        elif self.complete:
            self._pool._put(self)
        else:  # the body's last bytes (a chunked body's end) are still on the way
            self._release_when_complete = True
            self.body.clear()
            self._tail_timer = self._loop.call_later(TAIL_WAIT_S, self.close)

    def close(self) -> None:
        self._stop_timer()
        if self._tail_timer is not None:
            self._tail_timer.cancel()
            self._tail_timer = None
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True
        self._pool._forget(self)

    # -- parsing -------------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.close()
        self._wake()

    def _parse(self) -> None:
        if not self.head_done and not self._parse_head():
            return
        if self._mode == "length":
            take = min(len(self._raw), self._left)
            self.body += self._raw[:take]
            del self._raw[:take]
            self._left -= take
            if not self._left:
                self._done()
        elif self._mode == "close":
            self.body += self._raw
            self._raw.clear()
        elif self._mode != "none":
            self._parse_chunks()
        if self.complete:
            if self._raw:
                raise UpstreamError("the server sent bytes past the end of its answer")
            if self._release_when_complete:
                self._release_when_complete = False
                self.body.clear()
                self._pool._put(self)

    def _parse_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            if len(self._raw) > MAX_HEAD_BYTES:
                raise UpstreamError("the response head is too long")
            return False
        lines = self._raw[:end].decode("latin-1").split("\r\n")
        del self._raw[: end + 4]
        version, _, rest = lines[0].partition(" ")
        status = rest[:3]
        if not version.startswith("HTTP/1.") or not status.isdigit():
            raise UpstreamError(f"not an HTTP/1.x response: {lines[0][:100]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= int(status) < 200:  # an interim answer: the real one follows
            return self._parse_head()
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise UpstreamError("a compressed answer, though none was accepted")
        self.status, self.headers, self.head_done = int(status), headers, True
        connection = headers.get("connection", "").lower()
        self.keep_alive = version == "HTTP/1.1" and connection != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "size"
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise UpstreamError("a malformed Content-Length") from None
            self._mode = "length"
            if not self._left:
                self._done()
        elif self.status in (204, 304):
            self._done()
        else:
            self._mode, self.keep_alive = "close", False
        return True

    def _parse_chunks(self) -> None:
        raw, pos = self._raw, 0
        while not self.complete:
            mode = self._mode
            if mode == "data":
                take = min(len(raw) - pos, self._left)
                if take <= 0:
                    break
                self.body += raw[pos : pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    self._mode = "crlf"
                continue
            if mode == "crlf":
                if len(raw) - pos < 2:
                    break
                if raw[pos : pos + 2] != b"\r\n":
                    raise UpstreamError("a chunk does not end with CRLF")
                pos += 2
                self._mode = "size"
                continue
            end = raw.find(b"\r\n", pos)
            if end < 0:
                if len(raw) - pos > MAX_HEAD_BYTES:
                    raise UpstreamError("a chunk size line is too long")
                break
            line = bytes(raw[pos:end])
            pos = end + 2
            if mode == "trailer":
                if not line:
                    self._done()
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise UpstreamError(f"a malformed chunk size: {line[:40]!r}") from None
            if not size:
                self._mode = "trailer"
            elif len(raw) - pos >= size + 2 and raw[pos + size : pos + size + 2] == b"\r\n":
                self.body += raw[pos : pos + size]  # the usual case: the whole chunk is here
                pos += size + 2
            else:
                self._mode, self._left = "data", size
        del raw[:pos]

    def _done(self) -> None:
        self.complete = True
        self._mode = "none"
        if self._tail_timer is not None:
            self._tail_timer.cancel()
            self._tail_timer = None


class UpstreamResponse:
    """The status and headers of one answer, and its body as it arrives."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers

    async def readany(self, deadline: float | None = None) -> bytes:
        """The body bytes that came since the last call (waiting for some); ``b""`` at its end;
        ``TimeoutError`` when nothing came by ``deadline`` (loop time)."""
        connection = self._connection
        while True:
            if connection.body:
                return connection.take_body()
            if connection.complete:
                return b""
            if connection.error is not None:
                raise connection.error
            await connection.wait(deadline)

    async def text(self, deadline: float | None = None) -> str:
        parts = []
        while data := await self.readany(deadline):
            parts.append(data)
        return b"".join(parts).decode("utf-8", errors="replace")

    def release(self) -> None:
        self._connection.release()

    def close(self) -> None:
        self._connection.close()


class UpstreamPool:
    """Keep-alive connections to ``host:port``; ``host_header`` names the server in requests."""

    def __init__(self, host: str, port: int, host_header: str, connect_timeout_s: float) -> None:
        self._host, self._port = host, port
        self._host_header = host_header
        self._connect_timeout_s = connect_timeout_s
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._closed = False

    async def post(
        self, target: str, headers: Mapping[str, str], body: bytes, deadline: float | None = None
    ) -> UpstreamResponse:
        """Send the request and wait for the response head, ``TimeoutError`` past ``deadline`` (loop
        time). A kept-alive connection that the server had already closed (nothing came back on it)
        is replaced by a new one."""
        lines = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if any("\n" in line or "\r" in line for line in lines):
            raise ValueError("a header holds a line break")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        while True:
            if self._idle:
                connection, reused = self._idle.pop(), True
            else:
                connection, reused = await self._connect(deadline), False
            try:
                connection.send(data)
                while not connection.head_done:
                    if connection.error is not None:
                        raise connection.error
                    await connection.wait(deadline)
            except UpstreamError:
                connection.close()
                if reused and not connection.received:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return UpstreamResponse(connection)

    async def _connect(self, deadline: float | None) -> _Connection:
        if self._closed:
            raise UpstreamError("the connection pool is closed")
        loop = asyncio.get_running_loop()
        connect_by = loop.time() + self._connect_timeout_s
        try:
            async with asyncio.timeout_at(connect_by if deadline is None else min(connect_by, deadline)):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port
                )
        except TimeoutError:
            if deadline is not None and deadline <= connect_by:
                raise  # the caller's own deadline
            raise UpstreamError(f"no connection within {self._connect_timeout_s:g} s") from None
        self._open.add(connection)
        return connection

    def _put(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
            connection.close()
        else:
            self._idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
