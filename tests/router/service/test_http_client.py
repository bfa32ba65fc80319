"""The router's HTTP client against a stand-in for vLLM's OpenAI server and against a real replica
agent's HTTP port, both on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from protos.generation import GenerateEvent, GenerateInput
from protos.snapshot import ReplicaSnapshot
from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig
from replica_agent.service.app import Agent
from router.service.http_client import HttpReplicaClient
from router.service.replica_client import ReplicaCallError, ReplicaClient
from tests.agent.fake_vllm import FakeVllm

MODEL = "fake-llama-8b"
AGENT_MODEL = "llama-3.1-8b"
PROMPT = "Route this request to the replica with the most room in its cache, please."
T = TypeVar("T")


def run(body: Awaitable[T], timeout_s: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(body, timeout_s)

    return asyncio.run(bounded())


def request(request_id: str, max_tokens: int = 8, model: str = MODEL, **fields: Any) -> GenerateInput:
    fields.setdefault("prompt", PROMPT)
    return GenerateInput(request_id=request_id, model=model, max_tokens=max_tokens, **fields)


@asynccontextmanager
async def fake_vllm(**settings: Any) -> AsyncIterator[tuple[FakeVllm, HttpReplicaClient]]:
    client_settings = {k: settings.pop(k) for k in list(settings) if k.endswith("_s") and "timeout" in k}
    server = FakeVllm(**settings)
    url = await server.start()
    client = HttpReplicaClient(
        "vllm-1", url + "/v1", gpu="h100-80gb", scrape_interval_s=0.1, **client_settings
    )
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)


async def failure_of(events: AsyncIterator[GenerateEvent]) -> tuple[ReplicaCallError, int]:
    received = 0
    try:
        async for _ in events:
            received += 1
    except ReplicaCallError as error:
        return error, received
    raise AssertionError("the stream ended without an error")


async def snapshot_where(
    snapshots: AsyncIterator[ReplicaSnapshot], condition: Callable[[ReplicaSnapshot], bool], seen: list[str]
) -> ReplicaSnapshot:
    """The first snapshot meeting ``condition``; ``seen`` collects every admitted id on the way."""
    async for snapshot in snapshots:
        seen.extend(snapshot.admitted_ids)
        if condition(snapshot):
            return snapshot
    raise AssertionError("the snapshot stream ended")


def test_info_comes_from_the_model_list_and_the_cache_config_metric() -> None:
    async def body() -> None:
        async with fake_vllm(max_model_len=8192, num_gpu_blocks=1234) as (_, client):
            replica: ReplicaClient = client
            info = await replica.info()
            assert (info.replica_id, info.model, info.gpu, info.tier) == (
                "vllm-1",
                MODEL,
                "h100-80gb",
                "cloud",
            )
            assert (info.max_model_len, info.block_size, info.num_blocks) == (8192, 16, 1234)
            assert await replica.check_health()

    run(body())


def test_a_streamed_completion_and_chat_end_with_usage() -> None:
    async def body() -> None:
        async with fake_vllm(answer_tokens=6) as (server, client):
            trace = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
            events = [
                e async for e in client.generate(request("cmpl-1", 12, ignore_eos=True, traceparent=trace))
            ]
            chat = [
                e
                async for e in client.generate(request("chat-1", 12, prompt=None, messages=(("user", "Hi"),)))
            ]
            seen = server.seen("cmpl-1")
        final = events[-1]
        assert final.finished and final.finish_reason == "length" and final.usage is not None
        assert final.usage.completion_tokens == len(events) - 1 == 12
        assert final.usage.prompt_tokens == 16 and "".join(e.text for e in events).startswith("the router")
        assert not any(e.finished for e in events[:-1]) and all(e.request_id == "cmpl-1" for e in events)
        assert seen.path == "/v1/completions" and seen.headers["traceparent"] == trace
        assert seen.body["stream"] is True and seen.body["stream_options"] == {"include_usage": True}
        assert chat[-1].finish_reason == "stop" and chat[-1].usage is not None
        assert chat[-1].usage.completion_tokens == len(chat) - 1 == 6

    run(body())


def test_snapshots_follow_the_servers_gauges_and_report_sent_ids_once() -> None:
    async def body() -> None:
        async with fake_vllm(token_delay_s=0.03, answer_tokens=30) as (server, client):
            await client.info()
            snapshots = client.watch_snapshots()
            idle = await anext(snapshots)
            assert idle.num_running == 0 and idle.free_blocks == idle.total_blocks == 1000
            stream = client.generate(request("slow", 30))
            await anext(stream)
            admitted: list[str] = []
            busy = await snapshot_where(snapshots, lambda s: s.num_running == 1, admitted)
            assert busy.seq > idle.seq and busy.free_blocks < busy.total_blocks
            assert busy.running_context_tokens > 0 and busy.block_size == 16
            rest = [event async for event in stream]
            assert rest[-1].finished and server.seen("slow").finished
            await snapshot_where(snapshots, lambda s: s.num_running == 0, admitted)
            assert admitted == ["slow"]
            await snapshots.aclose()

    run(body())


@pytest.mark.parametrize(
    ("fields", "kind", "status", "says"),
    [
        ({"max_tokens": 5000}, "invalid_request", 400, "maximum context length is 4096 tokens"),
        ({"model": "no-such-model"}, "model_not_found", 404, "does not exist"),
    ],
)
def test_a_refusal_is_final_and_carries_the_servers_message(
    fields: dict[str, Any], kind: str, status: int, says: str
) -> None:
    async def body() -> tuple[ReplicaCallError, int]:
        async with fake_vllm() as (_, client):
            return await failure_of(client.generate(request("bad", **fields)))

    error, received = run(body())
    assert received == 0 and not error.retryable
    assert (error.kind, error.status) == (kind, status) and says in error.message


def test_a_server_that_is_down_is_a_retryable_error() -> None:
    async def body() -> None:
        async with fake_vllm() as (server, client):
            await server.stop()
            started = time.monotonic()
            error, _ = await failure_of(client.generate(request("lost")))
            assert error.retryable and (error.kind, error.status) == ("unavailable", 503)
            with pytest.raises(ReplicaCallError) as scrape_error:
                await anext(client.watch_snapshots())
            assert scrape_error.value.retryable
            with pytest.raises(ReplicaCallError):
                await client.info()
            assert not await client.check_health()
            assert time.monotonic() - started < 1.0

    run(body())


def test_a_failed_scrape_ends_the_snapshot_stream() -> None:
    async def body() -> None:
        async with fake_vllm(fail_metrics=True) as (_, client):
            info = await client.info()  # the model list alone describes the replica
            assert info.model == MODEL and info.num_blocks == 0
            with pytest.raises(ReplicaCallError, match="/metrics"):
                await anext(client.watch_snapshots())

    run(body())


def test_closing_the_stream_early_drops_the_connection_and_the_server_aborts() -> None:
    async def body() -> None:
        async with fake_vllm(token_delay_s=0.02, answer_tokens=200) as (server, client):
            events = client.generate(request("leaver", 200))
            await anext(events)
            await events.aclose()
            await eventually(lambda: server.seen("leaver").disconnected)
            assert server.num_running == 0 and not server.seen("leaver").finished

    run(body())


def test_abort_closes_the_open_response_and_ends_the_stream() -> None:
    async def body() -> None:
        async with fake_vllm(token_delay_s=0.02, answer_tokens=200) as (server, client):
            events = client.generate(request("victim", 200))
            await anext(events)
            assert await client.abort("victim")
            rest = [event async for event in events]
            assert rest[-1].finished and rest[-1].finish_reason == "abort"
            await eventually(lambda: server.seen("victim").disconnected)
            assert not await client.abort("victim") and not await client.abort("never-sent")

    run(body())


def test_no_first_token_in_time_is_a_retryable_timeout_even_after_the_role_chunk() -> None:
    async def body() -> None:
        async with fake_vllm(token_delay_s=0.5, first_token_timeout_s=0.2) as (_, client):
            started = time.monotonic()
            chat = request("slow-chat", prompt=None, messages=(("user", "Hello"),))
            error, received = await failure_of(client.generate(chat))
            assert time.monotonic() - started < 0.45
            assert received == 0 and error.retryable and error.kind == "timeout"

    run(body())


def test_the_scrape_interval_and_url_are_validated() -> None:
    with pytest.raises(ValueError, match=r"0\.1-0\.25"):
        HttpReplicaClient("r", "http://127.0.0.1:1", scrape_interval_s=0.05)
    with pytest.raises(ValueError, match="http"):
        HttpReplicaClient("r", "127.0.0.1:1")


def test_a_replica_agents_http_port_works_as_a_plain_openai_server() -> None:
    async def body() -> None:
        config = AgentConfig(
            executor="sim", gpu="a100-80gb", model=AGENT_MODEL, grpc_port=0, http_port=0, speedup=2.0
        )
        agent = Agent(config)
        ports = await agent.start()
        client = HttpReplicaClient("agent-http", f"http://127.0.0.1:{ports.http}", scrape_interval_s=0.1)
        try:
            info = await client.info()
            assert info.model == AGENT_MODEL and info.block_size == 16 and info.num_blocks > 0
            assert await client.check_health()
            quick = [e async for e in client.generate(request("q", 8, AGENT_MODEL, ignore_eos=True))]
            assert quick[-1].usage is not None and quick[-1].usage.completion_tokens == 8
            assert sum(len(e.token_ids) for e in quick) == 8  # the agent returns token ids when asked
            snapshots = client.watch_snapshots()
            stream = client.generate(request("long", 2000, AGENT_MODEL, ignore_eos=True))
            await anext(stream)
            busy = await snapshot_where(snapshots, lambda s: s.num_running == 1, [])
            assert busy.free_blocks < busy.total_blocks == info.num_blocks
            await stream.aclose()
            engine = agent.backend.loop.engine if isinstance(agent.backend, BuiltinBackend) else None
            assert engine is not None
            await eventually(lambda: engine.num_requests == 0)
            await snapshots.aclose()
        finally:
            await client.close()
            await agent.stop(0)

    run(body())
