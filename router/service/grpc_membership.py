"""Agents joining and leaving a router's fleet over gRPC (``Register`` / ``Deregister``)."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import grpc

from protos import router_pb2 as pb
from router.config import ReplicaConfig
from router.service.replica_client import ReplicaCallError

if TYPE_CHECKING:
    from router.service.router import Router


class MembershipServicer:
    """The ``Register``/``Deregister`` methods of the router's gRPC service."""

    router: Router

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        key = self.router.config.admin_key
        if not key:
            return
        metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        token = metadata.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token, key):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "registering needs the router's admin key")

    async def Register(  # noqa: N802 - the generated service's method names
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterReply:
        await self._authorize(context)
        if not request.address:
            message = "address (the agent's host:port) is required"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        replica_id = request.replica_id or request.address
        known = self.router.cluster.descriptor(replica_id)
        if known is not None:
            if known.address == request.address:
                return pb.RegisterReply(added=False)
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"replica {replica_id!r} is registered at {known.address}"
            )
        try:
            await self.router.add_replica(ReplicaConfig(address=request.address, id=replica_id))
        except ReplicaCallError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot reach the agent: {error.message}")
        except ValueError as error:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(error))
        return pb.RegisterReply(added=True)

    async def Deregister(  # noqa: N802
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeregisterReply:
        await self._authorize(context)
        return pb.DeregisterReply(removed=await self.router.fleet.remove(request.replica_id))
