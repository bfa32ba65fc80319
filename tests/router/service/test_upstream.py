"""The router's small HTTP/1.1 client for streamed answers: body framing however the bytes are cut,
keep-alive reuse, a stale kept-alive connection replaced, and failures as ``OSError``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from router.service.upstream import UpstreamError, UpstreamPool, UpstreamResponse

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(body: Awaitable[T], timeout_s: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(body, timeout_s)

    return asyncio.run(bounded())


async def read_all(response: UpstreamResponse) -> bytes:
    parts = []
    while data := await response.readany():
        parts.append(data)
    return b"".join(parts)


async def raw_server(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece) + b"0\r\n\r\n"


@settings(max_examples=100, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=50), max_size=6),
    cuts=st.lists(st.integers(1, 20), max_size=30),
    sized=st.booleans(),
)
def test_a_body_comes_out_whole_however_the_server_cuts_its_bytes(
    pieces: list[bytes], cuts: list[int], sized: bool
) -> None:
    body = b"".join(pieces)
    if sized:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        wire = head + body
    else:
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(pieces)

    async def scenario() -> tuple[bytes, int]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            start = 0
            for cut in [*cuts, len(wire)]:
                writer.write(wire[start : start + cut])
                await writer.drain()
                await asyncio.sleep(0)
                start += cut
            await reader.read()  # keep the connection open until the client is done
            writer.close()

        server, port = await raw_server(answer)
        pool = UpstreamPool("127.0.0.1", port, f"127.0.0.1:{port}", 2.0)
        try:
            response = await pool.post("/v1/completions", {"X-Request-Id": "r"}, b"{}")
            received = await read_all(response)
            response.release()
            return received, len(pool._idle)
        finally:
            pool.close()
            server.close()

    received, idle = run(scenario())
    assert received == body
    assert idle == 1  # read to its end: back in the pool


def test_connections_are_kept_alive_and_a_stale_one_is_replaced() -> None:
    async def scenario() -> list[Any]:
        seen: list[str] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await read_request(reader)
            seen.append(request.split(b"\r\n")[0].decode())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()  # keep-alive promised, then the connection is dropped while idle

        server, port = await raw_server(answer)
        pool = UpstreamPool("127.0.0.1", port, f"127.0.0.1:{port}", 2.0)
        try:
            bodies = []
            for _ in range(3):
                response = await pool.post("/v1/completions", {}, b"{}")
                bodies.append(await read_all(response))
                response.release()
                await asyncio.sleep(0.05)
            return [bodies, seen]
        finally:
            pool.close()
            server.close()

    bodies, seen = run(scenario())
    assert bodies == [b"ok"] * 3
    assert seen == ["POST /v1/completions HTTP/1.1"] * 3


def test_a_keep_alive_server_serves_every_request_on_one_connection() -> None:
    async def scenario() -> tuple[list[str], int]:
        connections = set()

        async def echo(request: web.Request) -> web.Response:
            connections.add(request.transport)
            return web.Response(text=(await request.text()) + request.headers["X-Request-Id"])

        app = web.Application()
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        pool = UpstreamPool("127.0.0.1", port, f"127.0.0.1:{port}", 2.0)
        try:
            texts = []
            for i in range(4):
                response = await pool.post("/echo", {"X-Request-Id": str(i)}, b"body-")
                assert response.status == 200
                texts.append(await response.text())
                response.release()
            return texts, len(connections)
        finally:
            pool.close()
            await runner.cleanup()

    texts, connections = run(scenario())
    assert texts == ["body-0", "body-1", "body-2", "body-3"]
    assert connections == 1


def test_a_connection_released_before_its_body_ended_rejoins_the_pool_at_the_end() -> None:
    async def scenario() -> tuple[int, int]:
        finish = asyncio.Event()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await finish.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
            writer.close()

        server, port = await raw_server(answer)
        pool = UpstreamPool("127.0.0.1", port, f"127.0.0.1:{port}", 2.0)
        try:
            response = await pool.post("/", {}, b"")
            assert await response.readany() == b"hello"
            response.release()
            before = len(pool._idle)
            finish.set()
            for _ in range(100):
                if pool._idle:
                    break
                await asyncio.sleep(0.01)
            return before, len(pool._idle)
        finally:
            pool.close()
            server.close()

    assert run(scenario()) == (0, 1)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
)
def test_a_broken_answer_is_an_os_error(reply: bytes) -> None:
    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(reply)
            await writer.drain()
            writer.close()

        server, port = await raw_server(answer)
        pool = UpstreamPool("127.0.0.1", port, f"127.0.0.1:{port}", 2.0)
        try:
            response = await pool.post("/", {}, b"")
            await read_all(response)
        finally:
            pool.close()
            server.close()

    with pytest.raises(UpstreamError):
        run(scenario())


def test_a_refused_connection_and_a_header_with_a_line_break_fail_before_sending() -> None:
    async def refused() -> None:
        await UpstreamPool("127.0.0.1", 1, "127.0.0.1:1", 2.0).post("/", {}, b"")

    with pytest.raises(OSError):
        run(refused())

    async def injected() -> None:
        await UpstreamPool("127.0.0.1", 1, "127.0.0.1:1", 2.0).post("/", {"X-Request-Id": "a\r\nX: y"}, b"")

    with pytest.raises(ValueError):
        run(injected())


def test_reads_time_out_only_when_nothing_came_by_their_own_deadline() -> None:
    async def scenario() -> tuple[list[bytes], bool]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(5):
                await asyncio.sleep(0.05)
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
            await reader.read()  # then silence
            writer.close()

        server, port = await raw_server(answer)
        pool = UpstreamPool("127.0.0.1", port, f"127.0.0.1:{port}", 2.0)
        loop = asyncio.get_running_loop()
        try:
            response = await pool.post("/", {}, b"", loop.time() + 1.0)
            received: list[bytes] = []
            while len(received) < 5:
                received.append(await response.readany(loop.time() + 0.2))
            try:
                await response.readany(loop.time() + 0.2)
            except TimeoutError:
                return received, True
            return received, False
        finally:
            pool.close()
            server.close()

    received, timed_out = run(scenario())
    assert b"".join(received) == b"xxxxx"
    assert timed_out
