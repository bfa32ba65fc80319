"""The agent's gRPC front door: the ``Replica`` service of ``protos/replica.proto`` plus
``grpc.health.v1``, translating messages to the :class:`Backend` contract and back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.trace import Status, StatusCode, Tracer

from protos import replica_pb2 as pb
from protos import replica_pb2_grpc as pb_grpc
from protos.wire import snapshot_to_proto
from replica_agent.service.backend import AgentError, Backend, GenerateEvent, GenerateInput, close_stream
from replica_agent.service.tracing import start_request_span

if TYPE_CHECKING:
    from replica_agent.service.metrics import AgentMetrics

SERVICE_NAME = "fleetroute.replica.v1.Replica"

_STATUS_FOR_KIND = {
    "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
    "model_not_found": grpc.StatusCode.NOT_FOUND,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "upstream": grpc.StatusCode.UNAVAILABLE,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "no_replica": grpc.StatusCode.UNAVAILABLE,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(error: AgentError) -> grpc.StatusCode:
    return _STATUS_FOR_KIND.get(error.kind, grpc.StatusCode.INTERNAL)


def to_generate_input(request: pb.GenerateRequest, metadata: dict[str, str]) -> GenerateInput:
    params = request.params
    has_other_input = bool(request.messages) or bool(request.prompt_token_ids)
    return GenerateInput(
        request_id=request.request_id or metadata.get("x-request-id") or f"req-{uuid.uuid4().hex}",
        model=request.model,
        max_tokens=params.max_tokens,
        prompt=request.prompt if request.prompt or not has_other_input else None,
        messages=tuple((m.role, m.content) for m in request.messages),
        prompt_token_ids=tuple(request.prompt_token_ids),
        ignore_eos=params.ignore_eos,
        stop_token_ids=tuple(params.stop_token_ids),
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        seed=params.seed if params.HasField("seed") else None,
        priority=request.priority,
        predicted_output_tokens=(
            request.predicted_output_tokens if request.HasField("predicted_output_tokens") else None
        ),
        traceparent=metadata.get("traceparent"),
        tracestate=metadata.get("tracestate"),
    )


def to_chunk(event: GenerateEvent) -> pb.GenerateChunk:
    chunk = pb.GenerateChunk(
        request_id=event.request_id,
        token_ids=event.token_ids,
        text=event.text,
        time=event.time,
        elapsed_s=event.elapsed_s,
        finished=event.finished,
        finish_reason=event.finish_reason or "",
    )
    if event.usage is not None:
        chunk.usage.CopyFrom(
            pb.Usage(
                prompt_tokens=event.usage.prompt_tokens,
                completion_tokens=event.usage.completion_tokens,
                cached_tokens=event.usage.cached_tokens,
            )
        )
    return chunk


class ReplicaServicer(pb_grpc.ReplicaServicer):
    def __init__(
        self, backend: Backend, metrics: AgentMetrics | None = None, tracer: Tracer | None = None
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.tracer = tracer

    async def Generate(  # noqa: N802 - the generated service's method names
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateChunk],
    ) -> AsyncIterator[pb.GenerateChunk]:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        generate_input = to_generate_input(request, metadata)
        span = start_request_span("replica.generate", generate_input, "grpc", self.tracer)
        events = self.backend.generate(generate_input)
        if self.metrics is not None:
            events = self.metrics.instrument(generate_input, events, "grpc")
        try:
            async for event in events:
                yield to_chunk(event)
                if event.finished:
                    span.set_attribute("gen_ai.response.finish_reasons", [event.finish_reason or ""])
        except AgentError as error:
            span.set_status(Status(StatusCode.ERROR, error.message))
            await context.abort(status_for(error), error.message)
        finally:
            await close_stream(events)
            span.end()

    async def Abort(  # noqa: N802
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext[pb.AbortRequest, pb.AbortReply]
    ) -> pb.AbortReply:
        return pb.AbortReply(aborted=await self.backend.abort(request.request_id))

    async def WatchSnapshots(  # noqa: N802
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[pb.WatchRequest, pb.Snapshot]
    ) -> AsyncIterator[pb.Snapshot]:
        if request.interval_s < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "interval_s must not be negative")
        async for snapshot in self.backend.watch_snapshots(request.interval_s or None):
            yield snapshot_to_proto(snapshot, request.include_cache_events)

    async def Info(  # noqa: N802
        self, request: pb.InfoRequest, context: grpc.aio.ServicerContext[pb.InfoRequest, pb.ReplicaInfo]
    ) -> pb.ReplicaInfo:
        info = self.backend.info
        return pb.ReplicaInfo(
            replica_id=info.replica_id,
            model=info.model,
            gpu=info.gpu,
            tier=info.tier,
            executor=info.executor,
            block_size=info.block_size,
            num_blocks=info.num_blocks,
            max_model_len=info.max_model_len,
            hash_seed=info.hash_seed,
            version=info.version,
            tokenizer=info.tokenizer,
        )


class GrpcFrontDoor:
    """The gRPC server with the replica and health services; health follows the drain state."""

    def __init__(
        self, backend: Backend, metrics: AgentMetrics | None = None, tracer: Tracer | None = None
    ) -> None:
        self.backend = backend
        # SO_REUSEPORT off: a second agent on a busy port must fail, not silently share it.
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.health = health_aio.HealthServicer()
        pb_grpc.add_ReplicaServicer_to_server(  # type: ignore[no-untyped-call]
            ReplicaServicer(backend, metrics, tracer), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port} (in use?)")
        await self.server.start()
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
