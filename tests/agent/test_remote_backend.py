"""The remote (sidecar) backend against a fake vLLM server on loopback, and vLLM metrics parsing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import statistics
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from fleetroute import __version__
from protos.snapshot import ReplicaSnapshot, Tier
from replica_agent.backends.openai_upstream import parse_chunk, upstream_error
from replica_agent.backends.prometheus_scrape import (
    ForwardedRequest,
    MetricsFormatError,
    MissingMetricError,
    TokenRates,
    VllmLoad,
    parse_vllm_metrics,
    snapshot_from_load,
    token_rates,
)
from replica_agent.backends.remote import RemoteBackend
from replica_agent.config import AgentConfig
from replica_agent.engine.engine import ReplicaIdentity
from replica_agent.factory import build_backend
from replica_agent.service.backend import (
    DrainingError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
    close_stream,
)
from tests.agent.fake_vllm import FakeVllm

T = TypeVar("T")
MODEL = "fake-llama-8b"
PROMPT = "Explain how a router picks a replica for each request in a GPU fleet. " * 4

V1_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama-3.1-8b"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama-3.1-8b"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama-3.1-8b"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="llama-3.1-8b"} 4.0
vllm:num_preemptions_created{engine="0",model_name="llama-3.1-8b"} 1.7e+09
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama-3.1-8b"} 12345.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="llama-3.1-8b"} 678.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="llama-3.1-8b"} 12000.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="llama-3.1-8b"} 3000.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="llama-3.1-8b"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="llama-3.1-8b"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="llama-3.1-8b"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="llama-3.1-8b"} 0.4
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",\
gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="27000",sliding_window="None"} 1.0
"""

V0_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",num_gpu_blocks="None"} 1.0
"""


def two_models(usage_a: float, usage_b: float) -> str:
    lines = []
    for name, running, usage in (("a", 2, usage_a), ("b", 5, usage_b)):
        lines += [
            f'vllm:num_requests_running{{model_name="{name}"}} {running}',
            f'vllm:num_requests_waiting{{model_name="{name}"}} 1',
            f'vllm:kv_cache_usage_perc{{model_name="{name}"}} {usage}',
            f'vllm:generation_tokens_total{{model_name="{name}"}} {running * 100}',
        ]
    return "\n".join(lines) + "\n"


def run(body: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    return asyncio.run(asyncio.wait_for(body, timeout))


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def request(request_id: str, **fields: Any) -> GenerateInput:
    if not fields.get("messages") and not fields.get("prompt_token_ids"):
        fields.setdefault("prompt", PROMPT)
    return GenerateInput(request_id=request_id, model=fields.pop("model", MODEL),
                         max_tokens=fields.pop("max_tokens", 16), **fields)  # fmt: skip


async def collect(backend: RemoteBackend, req: GenerateInput) -> list[GenerateEvent]:
    return [event async for event in backend.generate(req)]


@contextlib.asynccontextmanager
async def served(
    api_key: str | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeVllm, RemoteBackend]]:
    fake = FakeVllm(**settings)
    await fake.start()
    backend = RemoteBackend(fake.url, replica_id="r1", gpu="h100-80gb", tier=Tier.EDGE, api_key=api_key)
    try:
        await backend.start()
        yield fake, backend
    finally:
        await backend.stop(0.0)
        await fake.stop()


# -- parsing ---------------------------------------------------------------------------------------
def test_vllm_v1_metrics_parse_into_load_with_cache_shape_and_counters() -> None:
    load = parse_vllm_metrics(V1_METRICS)
    assert (load.num_requests_running, load.num_requests_waiting, load.kv_cache_usage) == (3, 2, 0.25)
    assert (load.num_gpu_blocks, load.block_size, load.used_blocks) == (27000, 16, 6750)
    assert load.preemptions_total == 4
    assert (load.prompt_tokens_total, load.generation_tokens_total) == (12345, 678)
    assert (load.prefix_cache_queries_total, load.prefix_cache_hits_total) == (12000, 3000)
    assert load.model_names == ("llama-3.1-8b",)
    # cache_config_info carries no model label, so it counts for a model filter too
    assert parse_vllm_metrics(V1_METRICS, "llama-3.1-8b") == load


def test_older_vllm_names_and_an_unprofiled_cache() -> None:
    load = parse_vllm_metrics(V0_METRICS)
    assert (load.num_requests_running, load.kv_cache_usage, load.block_size) == (1, 0.5, 32)
    assert load.num_gpu_blocks is None and load.used_blocks is None
    assert load.preemptions_total == 0 and load.prompt_tokens_total is None
    assert load.prefix_cache_hits_total is None


def test_several_model_series_add_up_or_are_filtered_to_one() -> None:
    both = parse_vllm_metrics(two_models(0.2, 0.6))
    assert (both.num_requests_running, both.num_requests_waiting) == (7, 2)
    assert both.kv_cache_usage == pytest.approx(0.4)  # a fraction: averaged, not summed
    assert both.generation_tokens_total == 700 and both.model_names == ("a", "b")
    only_b = parse_vllm_metrics(two_models(0.2, 0.6), model_name="b")
    assert only_b.num_requests_running == 5 and only_b.kv_cache_usage == 0.6
    assert only_b.generation_tokens_total == 500 and only_b.model_names == ("a", "b")
    with pytest.raises(MissingMetricError, match="'c'"):
        parse_vllm_metrics(two_models(0.2, 0.6), model_name="c")
    assert parse_vllm_metrics(two_models(0.9, 1.7)).kv_cache_usage == 1.0


def test_without_cache_config_the_block_count_is_unknown() -> None:
    load = parse_vllm_metrics(two_models(0.1, 0.1))
    assert load.num_gpu_blocks is None and load.block_size is None
    snapshot = snapshot_from_load(load, identity=ReplicaIdentity("r", "a"), seq=1, now=0.0)
    assert snapshot.total_blocks == snapshot.free_blocks == 0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<html><body>502 Bad Gateway</body></html>", MetricsFormatError),
        ('{"running": 3}', MetricsFormatError),
        ("vllm:num_requests_running not-a-number", MetricsFormatError),
        ("", MissingMetricError),
        ("process_cpu_seconds_total 12.5\n", MissingMetricError),
        ("vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n", MissingMetricError),
    ],
)
def test_text_that_is_not_vllm_metrics_is_a_clear_value_error(text: str, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        parse_vllm_metrics(text)
    assert isinstance(caught.value, ValueError)


def test_rates_and_the_snapshot_built_from_a_load() -> None:
    older = VllmLoad(0, 0, 0.0, prompt_tokens_total=1000, generation_tokens_total=50)
    newer = VllmLoad(2, 1, 0.5, 100, 16, prompt_tokens_total=3000, generation_tokens_total=250)
    assert token_rates((10.0, older), (12.0, newer)) == TokenRates(1000.0, 100.0)
    assert token_rates((12.0, newer), (13.0, older)) == TokenRates()  # the server restarted
    flights = [ForwardedRequest(40), ForwardedRequest(30, 5), ForwardedRequest(20), ForwardedRequest(10, 1)]
    identity = ReplicaIdentity("r", "m")
    snapshot = snapshot_from_load(newer, identity=identity, seq=7, now=5.0, in_flight=flights,
                                  rates=TokenRates(1.0, 2.0), admitted_ids=("x",))  # fmt: skip
    assert (snapshot.total_blocks, snapshot.free_blocks, snapshot.block_size) == (100, 50, 16)
    assert (snapshot.num_running, snapshot.num_waiting) == (2, 2)  # one forwarded, not yet counted
    assert (snapshot.waiting_prefill_tokens, snapshot.running_context_tokens) == (60, 46)
    assert (snapshot.seq, snapshot.admitted_ids, snapshot.decode_tokens_per_s) == (7, ("x",), 2.0)


def test_upstream_errors_and_stream_chunks_in_both_openai_shapes() -> None:
    flat = upstream_error(400, '{"object": "error", "message": "bad top_p", "param": "top_p", "code": 400}')
    nested = upstream_error(400, '{"error": {"message": "bad seed", "type": "BadRequestError", "code": 400}}')
    assert isinstance(flat, InvalidRequestError) and (flat.message, flat.param) == ("bad top_p", "top_p")
    assert isinstance(nested, InvalidRequestError) and nested.message == "bad seed"
    for status in (429, 500, 503):
        assert isinstance(upstream_error(status, "<html>busy</html>"), UpstreamError)
    chunk = parse_chunk('{"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}')
    assert (chunk.text, chunk.finish_reason, chunk.usage) == ("hi", None, None)
    usage = parse_chunk('{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, '
                        '"prompt_tokens_details": {"cached_tokens": 8}}}').usage  # fmt: skip
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (
        9,
        3,
        8,
    )
    with_ids = parse_chunk('{"choices": [{"text": " a", "token_ids": [5, 6], "finish_reason": "length"}]}')
    assert (with_ids.text, with_ids.token_ids, with_ids.finish_reason) == (" a", (5, 6), "length")
    with pytest.raises(InvalidRequestError, match="too long"):
        parse_chunk('{"error": {"message": "too long", "code": 400}}')


# -- the backend -----------------------------------------------------------------------------------
def test_start_discovers_the_model_and_the_cache_shape_from_upstream() -> None:
    async def body() -> None:
        async with served(max_model_len=8192, num_gpu_blocks=640, block_size=32) as (_, backend):
            info = backend.info
            assert (info.model, info.max_model_len) == (MODEL, 8192)
            assert (info.num_blocks, info.block_size) == (640, 32)
            assert (info.executor, info.tokenizer, info.version) == ("remote", "upstream", __version__)
            assert (info.gpu, info.tier, info.replica_id) == ("h100-80gb", "edge", "r1")
            snapshot = backend.latest_snapshot()
            assert snapshot.healthy and snapshot.model == MODEL and snapshot.tier is Tier.EDGE
            assert snapshot.total_blocks == snapshot.free_blocks == 640

    run(body())


def test_a_chat_and_a_completion_stream_through_with_upstream_usage() -> None:
    async def body() -> None:
        async with served(api_key="sk-upstream") as (fake, backend):
            trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            chat = await collect(backend, request(
                "chat-1", messages=(("system", "Be brief."), ("user", "Why batch?")), max_tokens=40,
                temperature=0.5, seed=7, traceparent=trace, tracestate="k=v"))  # fmt: skip
            ids = tuple(range(100, 180))
            fixed = {"prompt_token_ids": ids, "max_tokens": 12, "ignore_eos": True}
            first = await collect(backend, request("ids-1", **fixed))
            again = await collect(backend, request("ids-2", **fixed))
        seen = fake.seen("chat-1")
        assert seen.path == "/v1/chat/completions"
        assert seen.body["stream"] is True and seen.body["stream_options"] == {"include_usage": True}
        assert seen.body["messages"][1] == {"role": "user", "content": "Why batch?"}
        assert (seen.body["temperature"], seen.body["seed"], seen.body["max_tokens"]) == (0.5, 7, 40)
        assert "ignore_eos" not in seen.body
        assert seen.headers["traceparent"] == trace and seen.headers["tracestate"] == "k=v"
        assert seen.headers["Authorization"] == "Bearer sk-upstream"
        final = chat[-1]
        assert final.finished and final.finish_reason == "stop" and final.usage is not None
        assert not any(e.finished for e in chat[:-1])
        assert "".join(e.text for e in chat) == "the router sends each request to a replica"
        assert seen.usage is not None and seen.usage["completion_tokens"] == 8
        assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (seen.usage["prompt_tokens"], 8)
        by_ids = fake.seen("ids-1")
        assert by_ids.path == "/v1/completions" and by_ids.body["prompt"] == list(ids)
        assert by_ids.body["ignore_eos"] is True
        assert first[-1].finish_reason == "length" and len([e for e in first if e.text]) == 12
        assert first[-1].usage is not None and again[-1].usage is not None
        assert (first[-1].usage.prompt_tokens, first[-1].usage.cached_tokens) == (80, 0)
        assert again[-1].usage.cached_tokens == 80  # upstream's prefix cache, passed through
        assert all(e.elapsed_s >= 0 and e.token_ids == () for e in first)

    run(body())


def test_snapshots_follow_the_upstream_load_every_0_1_to_0_25_s() -> None:
    async def body() -> list[ReplicaSnapshot]:
        async with served(token_delay_s=0.025) as (fake, backend):
            watcher = backend.watch_snapshots()
            snapshots = [await anext(watcher)]
            stream = asyncio.create_task(collect(backend, request("slow", max_tokens=40, ignore_eos=True)))
            async with asyncio.timeout(4.0):
                while not stream.done() or snapshots[-1].num_running:
                    snapshots.append(await anext(watcher))
            assert fake.num_running == 0 and (await stream)[-1].finish_reason == "length"
            return snapshots

    snapshots = run(body())
    busy = [s for s in snapshots if s.num_running == 1]
    assert busy and any(s.running_context_tokens > 40 for s in busy)
    assert all(s.free_blocks < s.total_blocks for s in busy)
    assert any(s.decode_tokens_per_s > 0 for s in snapshots)
    assert [s.admitted_ids for s in snapshots if s.admitted_ids] == [("slow",)]
    last = snapshots[-1]
    assert last.free_blocks == last.total_blocks and last.running_context_tokens == 0
    distinct = list({s.seq: s for s in snapshots}.values())  # a heartbeat repeats the latest
    assert [s.seq for s in distinct] == list(range(distinct[0].seq, distinct[-1].seq + 1))
    gaps = [after.time - before.time for before, after in itertools.pairwise(distinct)]
    assert len(gaps) >= 5 and 0.1 <= statistics.median(gaps) <= 0.25
    assert all(0.095 <= gap <= 0.3 for gap in gaps), gaps  # a little slack for a loaded machine


def test_a_consumer_that_goes_away_closes_the_upstream_stream() -> None:
    async def body() -> None:
        async with served(token_delay_s=0.02) as (fake, backend):
            events = backend.generate(request("gone", max_tokens=500, ignore_eos=True))
            for _ in range(3):
                await anext(events)
            await close_stream(events)
            await until(lambda: fake.seen("gone").disconnected)
            await until(lambda: fake.num_running == 0 and backend.latest_snapshot().num_running == 0)
            assert not fake.seen("gone").finished
            snapshot = backend.latest_snapshot()
            assert snapshot.running_context_tokens == snapshot.waiting_prefill_tokens == 0

    run(body())


def test_abort_ends_the_stream_and_upstream_sees_the_client_go() -> None:
    async def body() -> None:
        async with served(token_delay_s=0.02) as (fake, backend):
            events = backend.generate(request("stop-me", max_tokens=500, ignore_eos=True))
            await anext(events)
            assert await backend.abort("stop-me")
            assert not await backend.abort("stop-me") and not await backend.abort("never-sent")
            rest = [event async for event in events]
            assert rest[-1].finished and rest[-1].finish_reason == "abort" and rest[-1].usage is not None
            await until(lambda: fake.seen("stop-me").disconnected)

    run(body())


def test_bad_requests_are_refused_here_or_with_upstreams_message() -> None:
    async def body() -> None:
        async with served(max_model_len=256) as (fake, backend):
            with pytest.raises(ModelNotFoundError):
                await collect(backend, request("a", model="gpt-4"))
            with pytest.raises(InvalidRequestError, match="max_tokens"):
                await collect(backend, request("b", max_tokens=0))
            with pytest.raises(InvalidRequestError, match="exactly one"):
                await collect(backend, request("c", prompt="x", prompt_token_ids=(1, 2)))
            assert fake.requests == []  # refused before upstream saw anything
            with pytest.raises(InvalidRequestError, match="maximum context length is 256") as caught:
                await collect(backend, request("d", max_tokens=200))
            assert not isinstance(caught.value, UpstreamError)
            assert backend.latest_snapshot().admitted_ids == () and fake.num_running == 0

    run(body())


def test_an_upstream_outage_gives_upstream_errors_and_unhealthy_snapshots() -> None:
    async def body() -> None:
        async with served(num_gpu_blocks=300) as (fake, backend):
            fake.fail_metrics = True
            await until(lambda: not backend.latest_snapshot().healthy)
            assert backend.latest_snapshot().total_blocks == 300  # the last good numbers stay
            fake.fail_metrics = False
            await until(lambda: backend.latest_snapshot().healthy)
            await fake.stop()
            with pytest.raises(UpstreamError, match="cannot reach"):
                await collect(backend, request("down"))
            await until(lambda: not backend.latest_snapshot().healthy)

    run(body())


def test_draining_refuses_new_requests_and_cuts_old_ones_off_at_the_timeout() -> None:
    async def body() -> None:
        async with served(token_delay_s=0.02) as (fake, backend):
            events = backend.generate(request("long", max_tokens=1000, ignore_eos=True))
            await anext(events)
            rest = asyncio.create_task(collect_rest(events))
            stopping = asyncio.create_task(backend.stop(0.2))
            await until(lambda: backend.draining)
            assert backend.latest_snapshot().draining
            with pytest.raises(DrainingError):
                await collect(backend, request("late"))
            await stopping
            assert (await rest)[-1].finish_reason == "abort"
            await until(lambda: fake.seen("long").disconnected)
            assert [r.request_id for r in fake.requests] == ["long"]

    run(body())


async def collect_rest(events: AsyncIterator[GenerateEvent]) -> list[GenerateEvent]:
    return [event async for event in events]


def test_settings_and_an_unreachable_upstream_are_refused_clearly() -> None:
    for interval in (0.05, 0.3):
        with pytest.raises(ValueError, match=r"0\.1-0\.25"):
            RemoteBackend("http://127.0.0.1:8001", scrape_interval_s=interval)
    with pytest.raises(ValueError, match="http://"):
        RemoteBackend("127.0.0.1:8001")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = RemoteBackend(f"http://127.0.0.1:{port}/v1", connect_timeout_s=1.0)
    with pytest.raises(UpstreamError, match="/v1/models"):
        run(backend.start())
    built = build_backend(AgentConfig(executor="remote", remote_url="http://127.0.0.1:9/v1", model="m"))
    assert isinstance(built, RemoteBackend)
    assert (built.info.model, built.info.gpu, built.info.executor) == ("m", "unknown", "remote")
