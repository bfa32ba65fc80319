"""Agents that register with a router over gRPC, in either start order, and leave before draining."""

from __future__ import annotations

import asyncio
import socket

import grpc

from protos import router_pb2 as pb
from protos import router_pb2_grpc as pb_grpc
from replica_agent.config import AgentConfig
from replica_agent.service.app import Agent
from router.config import RouterConfig
from router.service.router import Router


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_agents_join_in_any_start_order_and_leave_before_draining() -> None:
    async def body() -> None:
        router_port = free_port()
        router_address = f"127.0.0.1:{router_port}"
        early = Agent(
            AgentConfig(grpc_port=0, http_port=0, replica_id="early", register_with=[router_address])
        )
        await early.start()  # the router is not up yet: the agent keeps trying
        router = Router(RouterConfig(http_port=0, grpc_port=router_port))
        await router.start()
        late = Agent(AgentConfig(grpc_port=0, http_port=0, gpu="h100-80gb", register_with=[router_address]))
        await late.start()
        try:
            ids = lambda: {d.replica_id for d in router.fleet.descriptors()}  # noqa: E731
            assert await until(lambda: ids() == {"early", f"h100-80gb-{late.ports.grpc}"}, 15.0), ids()
            async with grpc.aio.insecure_channel(router_address) as channel:
                stub = pb_grpc.RouterStub(channel)
                assert early.registrar is not None
                address = early.registrar.address
                again = await stub.Register(pb.RegisterRequest(replica_id="early", address=address))
                assert not again.added  # idempotent
                listed = await stub.ListReplicas(pb.ListReplicasRequest())
                assert {r.id for r in listed.replicas} == ids()
            await early.stop(drain_timeout_s=0.0)
            assert ids() == {f"h100-80gb-{late.ports.grpc}"}  # deregistered before it drained
        finally:
            await late.stop(drain_timeout_s=0.0)
            await router.stop()
        assert not router.fleet.descriptors()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_registration_needs_the_admin_key_when_the_router_has_one() -> None:
    async def body() -> None:
        router = Router(RouterConfig(http_port=0, grpc_port=0, admin_key="sesame"))
        await router.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.ports.grpc}") as channel:
                stub = pb_grpc.RouterStub(channel)
                try:
                    await stub.Register(pb.RegisterRequest(replica_id="x", address="127.0.0.1:1"))
                    raise AssertionError("registered without the key")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                try:
                    await stub.Register(
                        pb.RegisterRequest(replica_id="x", address="127.0.0.1:1"),
                        metadata=(("authorization", "Bearer sesame"),),
                    )
                    raise AssertionError("registered an agent nobody listens for")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await router.stop()

    asyncio.run(asyncio.wait_for(body(), 30))
