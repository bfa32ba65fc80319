"""The router's client for one fleetroute replica agent, over ``grpc.aio`` (``protos/replica.proto``).

One channel per agent, opened on first use and shared by every call. Failures become
:class:`ReplicaCallError`: retryable while nothing has streamed yet (another replica may well take
the request), final once tokens have gone out or when the request itself is at fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from protos import replica_pb2 as pb
from protos.generation import AgentInfo, GenerateEvent, GenerateInput, Usage
from protos.snapshot import ReplicaSnapshot
from protos.wire import snapshot_from_proto
from router.service.replica_client import ReplicaCallError

SERVICE = "fleetroute.replica.v1.Replica"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Reconnect soon after an agent restarts instead of backing off for up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)
_RETRYABLE_BEFORE_START = {
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("unavailable", 503),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("overloaded", 429),
}
_REQUEST_FAULTS = {
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_request", 400),
    grpc.StatusCode.OUT_OF_RANGE: ("invalid_request", 400),
    grpc.StatusCode.NOT_FOUND: ("model_not_found", 404),
}


def call_error(replica_id: str, error: grpc.aio.AioRpcError, *, started: bool) -> ReplicaCallError:
    """The router's view of a failed call; ``started`` is true once an answer chunk has streamed."""
    code, details = error.code(), error.details() or error.code().name
    if code in _REQUEST_FAULTS:  # the agent's own words go back to the client as they are
        kind, status = _REQUEST_FAULTS[code]
        return ReplicaCallError(details, retryable=False, kind=kind, status=status)
    message = f"replica {replica_id}: {details}"
    if started:
        return ReplicaCallError(f"{message} (stream broke off)", retryable=False, kind="upstream", status=502)
    kind, status = _RETRYABLE_BEFORE_START.get(code, ("upstream", 502))
    return ReplicaCallError(message, retryable=True, kind=kind, status=status)


def to_generate_request(request: GenerateInput) -> pb.GenerateRequest:
    params = pb.SamplingParams(
        max_tokens=request.max_tokens,
        ignore_eos=request.ignore_eos,
        stop_token_ids=request.stop_token_ids,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
    )
    return pb.GenerateRequest(
        request_id=request.request_id,
        model=request.model,
        prompt=request.prompt or "",
        messages=[pb.ChatMessage(role=role, content=content) for role, content in request.messages],
        prompt_token_ids=request.prompt_token_ids,
        params=params,
        priority=request.priority,
        predicted_output_tokens=request.predicted_output_tokens,
    )


def call_metadata(request: GenerateInput) -> tuple[tuple[str, str], ...]:
    metadata = [("x-request-id", request.request_id)]
    if request.traceparent:
        metadata.append(("traceparent", request.traceparent))
    if request.tracestate:
        metadata.append(("tracestate", request.tracestate))
    return tuple(metadata)


def to_event(chunk: pb.GenerateChunk) -> GenerateEvent:
    usage = None
    if chunk.HasField("usage"):
        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.cached_tokens)
    return GenerateEvent(
        request_id=chunk.request_id,
        token_ids=tuple(chunk.token_ids),
        text=chunk.text,
        time=chunk.time,
        elapsed_s=chunk.elapsed_s,
        finished=chunk.finished,
        finish_reason=chunk.finish_reason or None,
        usage=usage,
    )


def to_agent_info(reply: pb.ReplicaInfo) -> AgentInfo:
    return AgentInfo(
        replica_id=reply.replica_id,
        model=reply.model,
        gpu=reply.gpu,
        tier=reply.tier,
        executor=reply.executor,
        block_size=reply.block_size,
        num_blocks=reply.num_blocks,
        max_model_len=reply.max_model_len,
        hash_seed=reply.hash_seed,
        version=reply.version,
        tokenizer=reply.tokenizer,
    )


class AgentClient:
    """``address`` is ``host:port`` of the agent's gRPC server. ``first_token_timeout_s`` bounds the
    wait for the first chunk, ``idle_timeout_s`` the gap between chunks, ``snapshot_timeout_s`` the gap
    between snapshots (agents push at least every snapshot interval) and ``rpc_timeout_s`` the unary
    calls. ``credentials`` switches to TLS."""

    def __init__(
        self,
        replica_id: str,
        address: str,
        *,
        connect_timeout_s: float = 2.0,
        first_token_timeout_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        snapshot_timeout_s: float = 5.0,
        rpc_timeout_s: float = 5.0,
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if (
            min(connect_timeout_s, first_token_timeout_s, idle_timeout_s, snapshot_timeout_s, rpc_timeout_s)
            <= 0
        ):
            raise ValueError("every timeout must be positive")
        self._replica_id, self._address = replica_id, address
        self._connect_timeout, self._rpc_timeout = connect_timeout_s, rpc_timeout_s
        self._first_token_timeout, self._idle_timeout = first_token_timeout_s, idle_timeout_s
        self._snapshot_timeout = snapshot_timeout_s
        # A connection attempt to a host that never answers gives up after the connect timeout.
        connect_ms = ("grpc.min_reconnect_backoff_ms", round(connect_timeout_s * 1000))
        self._options = (*channel_options, connect_ms)
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._closed = False

    @property
    def replica_id(self) -> str:
        return self._replica_id

    def _open_channel(self) -> grpc.aio.Channel:
        if self._closed:
            raise ReplicaCallError(f"the client for replica {self._replica_id} is closed", retryable=True)
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._address, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._address, self._credentials, options=self._options
                )
        return self._channel

    async def _connected(self) -> grpc.aio.Channel:
        """The channel once it is ready; a refused or silent agent fails within the connect timeout."""
        channel = self._open_channel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            remaining = deadline - loop.time()
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE or remaining <= 0:
                raise self._unreachable(state)
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                raise self._unreachable(state) from None
            state = channel.get_state(try_to_connect=True)
        return channel

    def _unreachable(self, state: grpc.ChannelConnectivity) -> ReplicaCallError:
        what = "refused or failed" if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE else "timed out"
        return ReplicaCallError(
            f"replica {self._replica_id} at {self._address}: connection {what}", retryable=True
        )

    # -- unary calls -------------------------------------------------------------------------------
    async def info(self) -> AgentInfo:
        method = self._open_channel().unary_unary(
            f"/{SERVICE}/Info",
            request_serializer=pb.InfoRequest.SerializeToString,
            response_deserializer=pb.ReplicaInfo.FromString,
        )
        try:
            reply = await method(pb.InfoRequest(), timeout=self._rpc_timeout)
        except grpc.aio.AioRpcError as error:
            raise call_error(self._replica_id, error, started=False) from None
        return to_agent_info(reply)

    async def abort(self, request_id: str) -> bool:
        method = self._open_channel().unary_unary(
            f"/{SERVICE}/Abort",
            request_serializer=pb.AbortRequest.SerializeToString,
            response_deserializer=pb.AbortReply.FromString,
        )
        try:
            reply = await method(pb.AbortRequest(request_id=request_id), timeout=self._rpc_timeout)
        except grpc.aio.AioRpcError as error:
            raise call_error(self._replica_id, error, started=False) from None
        return reply.aborted

    async def check_health(self) -> bool:
        """True when the agent's health service says SERVING for the replica service."""
        try:
            method = self._open_channel().unary_unary(
                HEALTH_CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            reply = await method(health_pb2.HealthCheckRequest(service=SERVICE), timeout=self._rpc_timeout)
        except (grpc.aio.AioRpcError, ReplicaCallError):
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    # -- streams -----------------------------------------------------------------------------------
    async def generate(self, request: GenerateInput) -> AsyncGenerator[GenerateEvent, None]:
        try:
            message = to_generate_request(request)
        except ValueError as error:  # a negative count or an id past uint32 does not fit the message
            raise ReplicaCallError(str(error), retryable=False, kind="invalid_request", status=400) from None
        channel = await self._connected()
        method = channel.unary_stream(
            f"/{SERVICE}/Generate",
            request_serializer=pb.GenerateRequest.SerializeToString,
            response_deserializer=pb.GenerateChunk.FromString,
        )
        call = method(message, metadata=call_metadata(request))
        started = False
        try:
            while True:
                wait_s = self._idle_timeout if started else self._first_token_timeout
                chunk = await self._receive(call, wait_s, "chunk" if started else "first chunk", started)
                if not isinstance(chunk, pb.GenerateChunk):
                    raise ReplicaCallError(
                        f"replica {self._replica_id}: the stream ended before the answer finished",
                        retryable=not started, kind="upstream", status=502,
                    )  # fmt: skip
                event = to_event(chunk)
                started = True
                yield event
                if event.finished:
                    return
        finally:
            call.cancel()  # a no-op once the call is done; otherwise the agent aborts the request

    async def watch_snapshots(self) -> AsyncGenerator[ReplicaSnapshot, None]:
        """The agent's snapshots with cache events; raises :class:`ReplicaCallError` when the stream
        fails, ends, or goes quiet for ``snapshot_timeout_s``."""
        channel = await self._connected()
        method = channel.unary_stream(
            f"/{SERVICE}/WatchSnapshots",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.Snapshot.FromString,
        )
        call = method(pb.WatchRequest(include_cache_events=True))
        try:
            while True:
                message = await self._receive(call, self._snapshot_timeout, "snapshot", started=False)
                if not isinstance(message, pb.Snapshot):
                    ended = f"replica {self._replica_id}: the snapshot stream ended"
                    raise ReplicaCallError(ended, retryable=True)
                yield snapshot_from_proto(message)
        finally:
            call.cancel()

    async def _receive(
        self, call: grpc.aio.UnaryStreamCall[Any, Any], wait_s: float, what: str, started: bool
    ) -> object:
        """The next message, or ``grpc.aio.EOF``; a silent stream is cancelled after ``wait_s``."""
        try:
            async with asyncio.timeout(wait_s):
                return await call.read()
        except TimeoutError:
            call.cancel()
            raise ReplicaCallError(
                f"replica {self._replica_id}: no {what} within {wait_s:g} s",
                retryable=not started, kind="timeout", status=504,
            ) from None  # fmt: skip
        except grpc.aio.AioRpcError as error:
            raise call_error(self._replica_id, error, started=started) from None

    async def close(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
