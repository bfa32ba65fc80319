"""An agent announcing itself to routers (``Register``) and leaving before it drains (``Deregister``).

Registration retries with capped exponential backoff until each router has the agent, so agents
and routers can start in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from protos import router_pb2 as pb
from protos import router_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

BACKOFF_S = (0.2, 10.0)
CALL_TIMEOUT_S = 5.0


class Registrar:
    def __init__(self, routers: list[str], replica_id: str, address: str, key: str | None = None) -> None:
        self.routers = routers
        self.replica_id = replica_id
        self.address = address
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._tasks: list[asyncio.Task[None]] = []
        self.registered: set[str] = set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._register(router), name=f"register-{router}") for router in self.routers
        ]

    async def _register(self, router: str) -> None:
        delay = BACKOFF_S[0]
        async with grpc.aio.insecure_channel(router) as channel:
            stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            request = pb.RegisterRequest(replica_id=self.replica_id, address=self.address)
            while True:
                try:
                    await stub.Register(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
                    self.registered.add(router)
                    log.info(
                        "registered %s (%s) with the router at %s", self.replica_id, self.address, router
                    )
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS):
                        log.error("router %s refused %s: %s", router, self.replica_id, error.details())
                        return
                    log.warning(
                        "router %s not reachable (%s); retrying in %.1f s", router, error.code(), delay
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])

    async def stop(self) -> None:
        """Stop retrying and leave every router that has this agent (best effort, bounded)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for router in sorted(self.registered):
            async with grpc.aio.insecure_channel(router) as channel:
                stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
                with contextlib.suppress(grpc.aio.AioRpcError):
                    request = pb.DeregisterRequest(replica_id=self.replica_id)
                    await stub.Deregister(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
        self.registered.clear()
