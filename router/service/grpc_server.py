"""The router's gRPC front door: the ``Router`` service of ``protos/router.proto`` plus
``grpc.health.v1`` (SERVING while some replica can take a request).

Generation goes through the dispatcher exactly as the HTTP front door's does; a client that cancels
its call closes the dispatcher's stream, which aborts the request on its replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.trace import Status, StatusCode

from protos import replica_pb2 as replica_pb
from protos import router_pb2 as pb
from protos import router_pb2_grpc as pb_grpc
from protos.generation import (
    AgentError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from replica_agent.service.backend import close_stream
from replica_agent.service.grpc_server import status_for, to_chunk, to_generate_input
from replica_agent.service.tracing import continue_trace, start_request_span
from router.policy.plugin import RouteDecision
from router.request_shaper import ShapedRequest
from router.service.grpc_membership import MembershipServicer

if TYPE_CHECKING:
    from router.service.router import Router

SERVICE_NAME = "fleetroute.router.v1.Router"
HEALTH_INTERVAL_S = 1.0
REPLICA_ID_METADATA = "x-replica-id"
RETRY_AFTER_METADATA = "retry-after"


def resolve_model(models: Mapping[str, int], requested: str) -> str:
    """The model a request is for: the one it names, or the fleet's only one when it names none."""
    if requested:
        if requested not in models:
            served = ", ".join(sorted(models)) or "none"
            raise ModelNotFoundError(f"model {requested!r} is not served (models: {served})", "model")
        return requested
    if len(models) == 1:
        return next(iter(models))
    raise InvalidRequestError("model is required when the fleet serves several models", "model")


async def abort_call(context: grpc.aio.ServicerContext[Any, Any], error: AgentError) -> NoReturn:
    """End the call with the status code for ``error``; overload says when to come back."""
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, OverloadedError):
        trailing = ((RETRY_AFTER_METADATA, str(error.retry_after_s)),)
    await context.abort(status_for(error), error.message, trailing_metadata=trailing)


def to_explanation(shaped: ShapedRequest, decision: RouteDecision) -> pb.RouteExplanation:
    routing = shaped.routing
    explanation = pb.RouteExplanation(
        request_id=decision.request_id,
        policy=decision.policy,
        replica_id=decision.replica_id or "",
        reason=decision.reason,
        candidates=[
            pb.CandidateScore(
                replica_id=score.replica_id,
                total=score.total,
                parts=[pb.ScorePart(scorer=name, score=value) for name, value in score.parts],
            )
            for score in decision.scores
        ],
        filtered_out=[
            pb.FilteredReplica(replica_id=replica_id, filter=filter_name)
            for replica_id, filter_name in decision.filtered_out
        ],
        prompt_tokens=routing.prompt_tokens,
        block_count=len(routing.block_hashes),
        ranked=decision.ranked,
    )
    if routing.predicted is not None:
        predicted = routing.predicted
        explanation.predicted_output.CopyFrom(
            pb.LengthPrediction(mean=predicted.mean, p50=predicted.p50, p90=predicted.p90)
        )
    return explanation


class RouterServicer(MembershipServicer, pb_grpc.RouterServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    def _generate_input(
        self, request: replica_pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> GenerateInput:
        """The request as the dispatcher takes it; raises :class:`AgentError` when it is bad."""
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        generate_input = to_generate_input(request, metadata)
        model = resolve_model(self.router.models(), generate_input.model)
        if generate_input.max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be at least 1, got {generate_input.max_tokens}", "max_tokens"
            )
        return replace(generate_input, model=model)

    def _replica_of(self, request_id: str) -> str | None:
        """The replica serving ``request_id`` while it is in flight."""
        entry = self.router.cluster.ledger.entry(request_id)
        return None if entry is None else entry.replica_id

    async def Generate(  # noqa: N802 - the generated service's method names
        self,
        request: replica_pb.GenerateRequest,
        context: grpc.aio.ServicerContext[replica_pb.GenerateRequest, replica_pb.GenerateChunk],
    ) -> AsyncIterator[replica_pb.GenerateChunk]:
        try:
            generate_input = self._generate_input(request, context)
        except AgentError as error:
            await abort_call(context, error)
        span = start_request_span("router.generate", generate_input, "grpc")
        events = self.router.dispatcher.generate(continue_trace(generate_input, span))
        replica_id: str | None = None
        try:
            async for event in events:
                replica_id = replica_id or self._replica_of(generate_input.request_id)
                if event.finished:
                    span.set_attribute("gen_ai.response.finish_reasons", [event.finish_reason or ""])
                    if replica_id is not None:
                        context.set_trailing_metadata(((REPLICA_ID_METADATA, replica_id),))
                yield to_chunk(event)
        except AgentError as error:
            span.set_status(Status(StatusCode.ERROR, error.message))
            await abort_call(context, error)
        finally:
            await close_stream(events)
            span.end()

    async def Complete(  # noqa: N802
        self,
        request: replica_pb.GenerateRequest,
        context: grpc.aio.ServicerContext[replica_pb.GenerateRequest, pb.Completion],
    ) -> pb.Completion:
        try:
            generate_input = self._generate_input(request, context)
        except AgentError as error:
            await abort_call(context, error)
        span = start_request_span("router.complete", generate_input, "grpc")
        events = self.router.dispatcher.generate(continue_trace(generate_input, span))
        received: list[GenerateEvent] = []
        replica_id: str | None = None
        try:
            async for event in events:
                replica_id = replica_id or self._replica_of(generate_input.request_id)
                received.append(event)
        except AgentError as error:
            span.set_status(Status(StatusCode.ERROR, error.message))
            await abort_call(context, error)
        finally:
            await close_stream(events)
            span.end()
        return _completion(generate_input.request_id, received, replica_id or "")

    async def ListReplicas(  # noqa: N802
        self,
        request: pb.ListReplicasRequest,
        context: grpc.aio.ServicerContext[pb.ListReplicasRequest, pb.ListReplicasReply],
    ) -> pb.ListReplicasReply:
        view = self.router.cluster.view(time.monotonic())
        replicas = []
        for descriptor in sorted(self.router.fleet.descriptors(), key=lambda d: d.replica_id):
            if request.model and descriptor.model != request.model:
                continue
            status = pb.ReplicaStatus(
                id=descriptor.replica_id,
                address=descriptor.address,
                transport=descriptor.transport,
                model=descriptor.model,
                gpu=descriptor.gpu,
                tier=descriptor.tier,
            )
            load = view.get(descriptor.replica_id)
            if load is not None:
                status.healthy = load.healthy
                status.draining = load.draining
                status.circuit_open = load.circuit_open
                if load.total_blocks > 0:
                    status.kv_usage = load.projected_kv_usage
                status.queue_depth = load.queue_depth
                status.inflight_requests = load.inflight_requests
                status.staleness_s = load.staleness_s
            snapshot = self.router.cluster.snapshot(descriptor.replica_id)
            if snapshot is not None:
                status.last_snapshot_seq = snapshot.seq
            replicas.append(status)
        return pb.ListReplicasReply(replicas=replicas)

    async def Explain(  # noqa: N802
        self,
        request: replica_pb.GenerateRequest,
        context: grpc.aio.ServicerContext[replica_pb.GenerateRequest, pb.RouteExplanation],
    ) -> pb.RouteExplanation:
        try:
            generate_input = self._generate_input(request, context)
        except AgentError as error:
            await abort_call(context, error)
        shaped, decision, _view = self.router.dispatcher.decide(generate_input)
        return to_explanation(shaped, decision)


def _completion(request_id: str, events: list[GenerateEvent], replica_id: str) -> pb.Completion:
    completion = pb.Completion(
        request_id=request_id,
        text="".join(event.text for event in events),
        token_ids=[token for event in events for token in event.token_ids],
        replica_id=replica_id,
    )
    final = next((event for event in reversed(events) if event.finished), None)
    if final is not None:
        completion.finish_reason = final.finish_reason or ""
        if final.usage is not None:
            usage = final.usage
            completion.usage.CopyFrom(
                replica_pb.Usage(
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cached_tokens,
                )
            )
    return completion


class RouterGrpcServer:
    """The gRPC server with the router and health services; health follows ``router.ready()``."""

    def __init__(self, router: Router, health_interval_s: float = HEALTH_INTERVAL_S) -> None:
        self.router = router
        self.health_interval_s = health_interval_s
        # SO_REUSEPORT off: a second router on a busy port must fail, not silently share it.
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.health = health_aio.HealthServicer()
        pb_grpc.add_RouterServicer_to_server(RouterServicer(router), self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._health_task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port) and return the bound port."""
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port} (in use?)")
        await self.server.start()
        await self.update_health()
        self._health_task = asyncio.create_task(self._follow_readiness(), name="router-grpc-health")
        return self.port

    async def update_health(self) -> None:
        serving = self.router.ready()
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def _follow_readiness(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.update_health()

    async def stop(self, grace_s: float) -> None:
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
