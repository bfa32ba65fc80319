"""The router's gRPC client against a real in-process replica agent (sim executor) on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from protos.generation import GenerateEvent, GenerateInput, UpstreamError
from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig
from replica_agent.engine.engine import Engine
from replica_agent.factory import build_backend
from replica_agent.service.app import Agent
from replica_agent.service.backend import close_stream
from router.service.agent_client import AgentClient
from router.service.replica_client import ReplicaCallError, ReplicaClient

MODEL = "llama-3.1-8b"
PROMPT = "Explain how a router balances requests over a fleet of GPUs with different speeds. " * 3
T = TypeVar("T")


def run(body: Awaitable[T], timeout_s: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(body, timeout_s)

    return asyncio.run(bounded())


def request(request_id: str, max_tokens: int = 16, **fields: Any) -> GenerateInput:
    fields.setdefault("prompt", PROMPT)
    return GenerateInput(request_id=request_id, model=MODEL, max_tokens=max_tokens, ignore_eos=True, **fields)


class Served:
    def __init__(self, agent: Agent, client: AgentClient) -> None:
        self.agent, self.client = agent, client

    @property
    def engine(self) -> Engine:
        assert isinstance(self.agent.backend, BuiltinBackend)
        return self.agent.backend.loop.engine


@asynccontextmanager
async def served(
    *, speedup: float = 20.0, breaking: str | None = None, **client_settings: Any
) -> AsyncIterator[Served]:
    config = AgentConfig(
        executor="sim", gpu="a100-80gb", model=MODEL, replica_id="agent-1", grpc_port=0, http_port=0,
        speedup=speedup, snapshot_interval_s=0.05,
    )  # fmt: skip
    agent = Agent(config, breaking_backend(config, breaking) if breaking else None)
    ports = await agent.start()
    client = AgentClient("agent-1", f"127.0.0.1:{ports.grpc}", **client_settings)
    try:
        yield Served(agent, client)
        # Every test leaves the agent without requests: a client that went away aborted its own.
        await eventually(lambda: Served(agent, client).engine.num_requests == 0)
    finally:
        await client.close()
        await agent.stop(0)


class BreakingBackend(BuiltinBackend):
    """The sim backend, except that every answer stalls (``how="stall"``) or fails after its first
    event, so the client sees a stream that goes quiet or breaks once tokens have flowed."""

    how = "fail"

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        events = super().generate(request)
        try:
            yield await anext(events)
            if self.how == "stall":
                await asyncio.sleep(60)
            raise UpstreamError("the engine fell over")
        finally:
            await close_stream(events)


def breaking_backend(config: AgentConfig, how: str) -> BreakingBackend:
    built = build_backend(config)
    assert isinstance(built, BuiltinBackend)
    backend = BreakingBackend(built.loop, built.tokenizer, built.info, built.length_script)
    backend.how = how
    return backend


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)


async def failure_of(events: AsyncIterator[GenerateEvent]) -> tuple[ReplicaCallError, int]:
    """The error that ends ``events`` and how many events came before it."""
    received = 0
    try:
        async for _ in events:
            received += 1
    except ReplicaCallError as error:
        return error, received
    raise AssertionError("the stream ended without an error")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_client_is_a_replica_client_that_reads_info_and_health() -> None:
    async def body() -> None:
        async with served() as s:
            client: ReplicaClient = s.client
            info = await client.info()
            assert (info.replica_id, info.model, info.gpu, info.executor) == (
                "agent-1",
                MODEL,
                "a100-80gb",
                "sim",
            )
            assert info.block_size == 16 and info.num_blocks == s.engine.pool.num_blocks
            assert info.max_model_len > 0
            assert await client.check_health()
            assert s.agent.grpc is not None
            await s.agent.grpc.set_serving(False)
            assert not await client.check_health()

    run(body())


def test_a_streamed_generation_ends_with_usage_matching_its_tokens() -> None:
    async def body() -> None:
        async with served() as s:
            trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
            events = [e async for e in s.client.generate(request("gen-1", 24, traceparent=trace))]
            chat = [
                e
                async for e in s.client.generate(
                    request("chat-1", 4, prompt=None, messages=(("user", "Hi"),))
                )
            ]
        final = events[-1]
        assert final.finished and final.finish_reason == "length" and final.usage is not None
        assert final.usage.completion_tokens == sum(len(e.token_ids) for e in events) == 24
        assert final.usage.prompt_tokens > 40
        assert all(e.request_id == "gen-1" for e in events) and not any(e.finished for e in events[:-1])
        assert "".join(e.text for e in events).strip()
        assert chat[-1].usage is not None and chat[-1].usage.completion_tokens == 4

    run(body())


def test_snapshots_arrive_and_follow_the_load() -> None:
    async def body() -> None:
        async with served(speedup=2.0) as s:
            snapshots = s.client.watch_snapshots()
            idle = await anext(snapshots)
            assert idle.replica_id == "agent-1" and idle.num_running == idle.num_waiting == 0
            streams = [s.client.generate(request(f"load-{i}", 500)) for i in range(3)]
            firsts = await asyncio.gather(*(anext(stream) for stream in streams))
            assert all(not event.finished for event in firsts)
            admitted: set[str] = set()
            busy = await anext(snapshots)
            while busy.num_running < 3:
                admitted.update(busy.admitted_ids)
                busy = await anext(snapshots)
            admitted.update(busy.admitted_ids)
            assert busy.seq > idle.seq and busy.free_blocks < idle.free_blocks
            assert {"load-0", "load-1", "load-2"} <= admitted
            for stream in streams:
                await stream.aclose()
            await snapshots.aclose()

    run(body())


def test_abort_finishes_the_stream_and_frees_its_blocks() -> None:
    async def body() -> None:
        async with served(speedup=2.0) as s:
            events = s.client.generate(request("victim", 2000))
            await anext(events)
            assert s.engine.pool.num_free < s.engine.pool.num_blocks
            assert await s.client.abort("victim")
            rest = [event async for event in events]
            assert rest[-1].finished and rest[-1].finish_reason == "abort"
            assert s.engine.pool.num_free == s.engine.pool.num_blocks
            assert not await s.client.abort("victim")

    run(body())


def test_closing_the_stream_early_aborts_the_request_on_the_agent() -> None:
    async def body() -> None:
        async with served(speedup=2.0) as s:
            events = s.client.generate(request("leaver", 2000))
            await anext(events)
            assert s.engine.num_requests == 1
            await events.aclose()
            await eventually(lambda: s.engine.num_requests == 0)
            assert s.engine.pool.num_free == s.engine.pool.num_blocks

    run(body())


@pytest.mark.parametrize(
    ("fields", "kind", "status", "says"),
    [
        ({"max_tokens": 0}, "invalid_request", 400, "max_tokens must be at least 1"),
        ({"max_tokens": -1}, "invalid_request", 400, "out of range"),
        ({"model": "no-such-model"}, "model_not_found", 404, "no-such-model"),
    ],
)
def test_a_refused_request_is_a_final_error_with_the_client_status(
    fields: dict[str, Any], kind: str, status: int, says: str
) -> None:
    async def body() -> ReplicaCallError:
        async with served() as s:
            bad = dataclasses.replace(request("bad", 8), **fields)
            error, received = await failure_of(s.client.generate(bad))
            assert received == 0
            return error

    error = run(body())
    assert not error.retryable and (error.kind, error.status) == (kind, status)
    assert says in error.message


def test_an_agent_nobody_listens_for_is_a_retryable_error_within_the_connect_timeout() -> None:
    async def body() -> None:
        client = AgentClient("gone", f"127.0.0.1:{free_port()}", connect_timeout_s=1.0)
        try:
            started = time.monotonic()
            error, _ = await failure_of(client.generate(request("lost")))
            assert time.monotonic() - started < 1.5
            assert error.retryable and (error.kind, error.status) == ("unavailable", 503)
            with pytest.raises(ReplicaCallError) as info_error:
                await client.info()
            assert info_error.value.retryable
            with pytest.raises(ReplicaCallError):
                await anext(client.watch_snapshots())
            assert not await client.check_health()
        finally:
            await client.close()

    run(body())


def test_no_first_token_in_time_is_a_retryable_timeout() -> None:
    async def body() -> None:
        async with served(speedup=0.001, first_token_timeout_s=0.3) as s:
            started = time.monotonic()
            error, received = await failure_of(s.client.generate(request("slow", 8)))
            assert 0.3 <= time.monotonic() - started < 1.5
            assert received == 0 and error.retryable and error.kind == "timeout"

    run(body())


def test_a_stream_that_goes_quiet_after_tokens_times_out_and_is_aborted() -> None:
    async def body() -> None:
        async with served(breaking="stall", idle_timeout_s=0.3) as s:
            error, received = await failure_of(s.client.generate(request("stalled", 100)))
            assert received == 1 and not error.retryable and error.kind == "timeout"
            await eventually(lambda: s.engine.num_requests == 0)

    run(body())


def test_a_stream_that_breaks_after_tokens_is_a_final_upstream_error() -> None:
    async def body() -> None:
        async with served(breaking="fail") as s:
            error, received = await failure_of(s.client.generate(request("broken", 100)))
            assert received == 1 and not error.retryable
            assert (error.kind, error.status) == ("upstream", 502)

    run(body())


def test_a_closed_client_refuses_further_calls() -> None:
    async def body() -> None:
        async with served() as s:
            await s.client.close()
            with pytest.raises(ReplicaCallError):
                await s.client.info()

    run(body())
