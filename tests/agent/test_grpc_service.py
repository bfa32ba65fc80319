"""The agent's gRPC service over a real loopback socket, with a grpc.aio client."""

import asyncio
import itertools
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import replica_pb2 as pb
from protos import replica_pb2_grpc as pb_grpc
from protos.wire import snapshot_from_proto
from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig
from replica_agent.factory import build_backend
from replica_agent.service.grpc_server import GrpcFrontDoor

MODEL = "llama-3.1-8b"
PROMPT = "Summarise why paged attention wastes less memory than contiguous KV caches. " * 4


class Served:
    def __init__(self, backend: BuiltinBackend, front: GrpcFrontDoor, channel: grpc.aio.Channel) -> None:
        self.backend, self.front, self.channel = backend, front, channel
        self.stub = pb_grpc.ReplicaStub(channel)
        self.engine = backend.loop.engine


async def serve(instant: bool = True, tracer=None, **settings) -> Served:
    config = AgentConfig(executor="sim", gpu="a100-80gb", model=MODEL, **settings)
    backend = build_backend(config, instant=instant)
    assert isinstance(backend, BuiltinBackend)
    await backend.start()
    front = GrpcFrontDoor(backend, tracer=tracer)
    port = await front.start("127.0.0.1", 0)
    return Served(backend, front, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))


async def shutdown(served: Served) -> None:
    await served.channel.close()
    await served.backend.stop(0.5)
    await served.front.stop(0.5)


def run(body, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(body, timeout))


def generate_request(request_id: str = "", max_tokens: int = 24, **fields) -> pb.GenerateRequest:
    fields.setdefault("prompt", PROMPT)
    ignore_eos = fields.pop("ignore_eos", False)
    return pb.GenerateRequest(
        request_id=request_id,
        model=fields.pop("model", MODEL),
        params=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos),
        **fields,
    )


def test_a_streamed_generation_ends_with_usage_that_matches_the_tokens_received() -> None:
    async def body() -> None:
        served = await serve()
        try:
            metadata = (
                ("x-request-id", "from-metadata"),
                ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
            )
            chunks = [
                c async for c in served.stub.Generate(generate_request(max_tokens=40), metadata=metadata)
            ]
            chat = [
                c
                async for c in served.stub.Generate(
                    generate_request(
                        "chat-1", prompt="", messages=[pb.ChatMessage(role="user", content="Hello there")]
                    )
                )
            ]
        finally:
            await shutdown(served)
        final = chunks[-1]
        assert final.finished and final.finish_reason in ("stop", "length")
        assert all(c.request_id == "from-metadata" for c in chunks)
        assert sum(len(c.token_ids) for c in chunks) == final.usage.completion_tokens > 0
        assert final.usage.prompt_tokens > 50
        assert "".join(c.text for c in chunks).strip()
        assert [c.elapsed_s for c in chunks] == sorted(c.elapsed_s for c in chunks)
        assert chat[-1].finished and chat[-1].usage.prompt_tokens > 3

    run(body())


async def drain(call) -> list[pb.GenerateChunk]:
    return [chunk async for chunk in call]


async def first_free_snapshot(stub, total: int, after_seq: int) -> pb.Snapshot:
    async for message in stub.WatchSnapshots(pb.WatchRequest()):
        if message.seq > after_seq and message.free_blocks == total:
            snapshot: pb.Snapshot = message
            return snapshot
    raise AssertionError("snapshot stream ended")


def test_abort_frees_the_blocks_in_the_very_next_snapshot() -> None:
    async def body() -> None:
        served = await serve(instant=False, speedup=0.5)
        try:
            call = served.stub.Generate(generate_request("victim", max_tokens=2000, ignore_eos=True))
            await call.read()
            assert served.engine.pool.num_free < served.engine.pool.num_blocks
            seq_before = served.backend.latest_snapshot().seq
            watch = served.stub.WatchSnapshots(pb.WatchRequest())
            await watch.read()  # the current snapshot
            assert (await served.stub.Abort(pb.AbortRequest(request_id="victim"))).aborted
            next_snapshot = await asyncio.wait_for(watch.read(), 1.0)
            assert next_snapshot.seq > seq_before
            assert next_snapshot.free_blocks == next_snapshot.total_blocks
            rest = [await call.read()]
            while rest[-1] is not grpc.aio.EOF and not rest[-1].finished:
                rest.append(await call.read())
            assert rest[-1].finish_reason == "abort"
            assert not (await served.stub.Abort(pb.AbortRequest(request_id="victim"))).aborted
            watch.cancel()
        finally:
            await shutdown(served)

    run(body())


def test_a_client_that_cancels_frees_its_blocks() -> None:
    async def body() -> None:
        served = await serve(instant=False, speedup=0.5)
        try:
            call = served.stub.Generate(generate_request("leaver", max_tokens=2000, ignore_eos=True))
            await call.read()
            seq_before = served.backend.latest_snapshot().seq
            call.cancel()
            freed = await asyncio.wait_for(
                first_free_snapshot(served.stub, served.engine.pool.num_blocks, seq_before), 1.0
            )
            assert freed.num_running == 0 and served.engine.num_requests == 0
        finally:
            await shutdown(served)

    run(body())


def test_snapshots_under_load_track_the_queue_and_acknowledge_every_admission_once() -> None:
    async def body() -> None:
        served = await serve(instant=False, speedup=4.0, engine={"max_num_seqs": 4})
        seen: list[pb.Snapshot] = []
        received_at: list[float] = []

        async def watch() -> None:
            async for message in served.stub.WatchSnapshots(pb.WatchRequest()):
                seen.append(message)
                received_at.append(time.monotonic())

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.sleep(0.15)
            ids = [f"load-{i}" for i in range(16)]
            calls = [served.stub.Generate(generate_request(i, max_tokens=30, ignore_eos=True)) for i in ids]
            await asyncio.gather(*(drain(call) for call in calls))
            await asyncio.sleep(0.25)
        finally:
            watcher.cancel()
            await shutdown(served)
        depth = [s.num_waiting + s.num_running for s in seen]
        assert max(s.num_waiting for s in seen) > 0 and depth[-1] == 0
        admitted = [i for s in seen for i in s.admitted_ids]
        assert sorted(admitted) == sorted(ids)  # each exactly once
        gaps = [b - a for a, b in itertools.pairwise(received_at)]
        assert max(gaps) < 0.5  # pushed every 100 ms even when idle; generous bound for a busy machine
        last = snapshot_from_proto(seen[-1])
        assert last.free_blocks == served.engine.pool.num_free and last.cache_fill == 0.0
        assert all(s.total_blocks == served.engine.pool.num_blocks for s in seen)

    run(body())


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"max_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ({"max_tokens": 4_000_000_000}, grpc.StatusCode.INVALID_ARGUMENT, "maximum context length"),
        ({"prompt": "token " * 20000}, grpc.StatusCode.INVALID_ARGUMENT, "maximum context length"),
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "not served"),
    ],
)
def test_malformed_requests_get_a_status_code_and_leave_the_engine_untouched(
    request_fields, code, message
) -> None:
    async def body() -> None:
        served = await serve()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                [c async for c in served.stub.Generate(generate_request("bad", **request_fields))]
            assert raised.value.code() == code and message in (raised.value.details() or "")
            assert served.engine.num_requests == 0
            assert served.engine.pool.num_free == served.engine.pool.num_blocks
        finally:
            await shutdown(served)

    run(body())


def test_info_and_health_describe_the_replica_and_follow_the_drain() -> None:
    async def body() -> None:
        served = await serve()
        try:
            info = await served.stub.Info(pb.InfoRequest())
            health = health_pb2_grpc.HealthStub(served.channel)
            before = await health.Check(
                health_pb2.HealthCheckRequest(service="fleetroute.replica.v1.Replica")
            )
            await served.front.set_serving(False)
            after = await health.Check(health_pb2.HealthCheckRequest(service=""))
        finally:
            await shutdown(served)
        assert (info.model, info.gpu, info.executor, info.block_size) == (MODEL, "a100-80gb", "sim", 16)
        assert info.num_blocks == served.engine.pool.num_blocks and info.max_model_len > 0
        assert info.tokenizer == "approx" and info.version
        assert before.status == health_pb2.HealthCheckResponse.SERVING
        assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING

    run(body())


def test_the_callers_trace_context_becomes_the_parent_of_the_agents_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def body() -> None:
        served = await serve(tracer=provider.get_tracer("test"))
        try:
            metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"), ("x-request-id", "traced"))
            await drain(served.stub.Generate(generate_request(), metadata=metadata))
        finally:
            await shutdown(served)

    run(body())
    (span,) = exporter.get_finished_spans()
    assert span.name == "replica.generate"
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
    assert span.attributes is not None and span.attributes["fleetroute.request_id"] == "traced"


def test_an_agent_stops_promptly_with_requests_still_streaming() -> None:
    from replica_agent.service.app import Agent

    async def body() -> None:
        agent = Agent(AgentConfig(executor="sim", gpu="a100-80gb", grpc_port=0, http_port=0, speedup=0.5))
        ports = await agent.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            stub = pb_grpc.ReplicaStub(channel)
            calls = [
                stub.Generate(generate_request(f"s{i}", max_tokens=3000, ignore_eos=True)) for i in range(3)
            ]
            for call in calls:
                await call.read()
            await asyncio.wait_for(agent.stop(drain_timeout_s=0.0), 5.0)
            for call in calls:
                chunks = await drain_quietly(call)
                assert not chunks or chunks[-1].finish_reason == "abort"

    run(body())


async def drain_quietly(call) -> list[pb.GenerateChunk]:
    chunks = []
    try:
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
    except grpc.aio.AioRpcError:
        pass
    return chunks
