"""The router's gRPC front door end to end: a grpc.aio client → router → two real sim agents, on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import replica_pb2 as replica_pb
from protos import router_pb2 as pb
from protos import router_pb2_grpc as pb_grpc
from protos.generation import GenerateEvent, GenerateInput, OverloadedError
from replica_agent.config import AgentConfig
from replica_agent.service.app import Agent
from router.config import ReplicaConfig, RouterConfig
from router.service.grpc_server import SERVICE_NAME, RouterGrpcServer
from router.service.router import Router

MODEL = "llama-3.1-8b"
PROMPT = "Explain why a router should balance GPUs of different speeds by time, not by count. " * 3
REPLICA_IDS = ("a", "b")
T = TypeVar("T")


def run(body: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(body, timeout_s))


@dataclass
class RunningFleet:
    router: Router
    agents: list[Agent]
    stub: pb_grpc.RouterStub
    health: health_pb2_grpc.HealthStub


@asynccontextmanager
async def running_fleet() -> AsyncIterator[RunningFleet]:
    agents = [
        Agent(
            AgentConfig(
                executor="sim", gpu="a100-80gb", model=MODEL, replica_id=replica_id,
                grpc_port=0, http_port=0, speedup=20,
            )
        )
        for replica_id in REPLICA_IDS
    ]  # fmt: skip
    started: list[Agent] = []
    router: Router | None = None
    try:
        for agent in agents:
            await agent.start()
            started.append(agent)
        replicas = [
            ReplicaConfig(address=f"127.0.0.1:{agent.ports.grpc}", id=replica_id)
            for agent, replica_id in zip(agents, REPLICA_IDS, strict=True)
        ]
        router = Router(RouterConfig(http_port=0, grpc_port=0, replicas=replicas, policy="sal"))
        ports = await router.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            yield RunningFleet(
                router, agents, pb_grpc.RouterStub(channel), health_pb2_grpc.HealthStub(channel)
            )
    finally:
        if router is not None:
            await router.stop()
        for agent in started:
            await agent.stop(0)


def generate_request(request_id: str = "", max_tokens: int = 24, **fields: Any) -> replica_pb.GenerateRequest:
    fields.setdefault("prompt", PROMPT)
    return replica_pb.GenerateRequest(
        request_id=request_id,
        model=fields.pop("model", MODEL),
        params=replica_pb.SamplingParams(max_tokens=max_tokens, ignore_eos=fields.pop("ignore_eos", True)),
        **fields,
    )


async def eventually(condition: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def agent_request_count(agent: Agent, finish_reason: str | None = None) -> float:
    """Requests the agent has counted: those that ended with ``finish_reason``, or all of them
    however they ended (refusals included)."""
    names = ("fleetroute_agent_requests_total", "fleetroute_agent_rejected_requests_total")
    return sum(
        sample.value
        for family in agent.metrics.registry.collect()
        for sample in family.samples
        if sample.name in names and finish_reason in (None, sample.labels.get("finish_reason"))
    )


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


def test_generate_streams_and_complete_answers_whole_through_the_router() -> None:
    async def body() -> None:
        async with running_fleet() as fleet:
            call = fleet.stub.Generate(generate_request(max_tokens=24), metadata=(("x-request-id", "g-1"),))
            chunks = [chunk async for chunk in call]
            trailing = dict(await call.trailing_metadata() or ())
            completion = await fleet.stub.Complete(generate_request("c-1", max_tokens=16))
            ledger_left = len(fleet.router.cluster.ledger)
        final = chunks[-1]
        assert final.finished and final.finish_reason == "length"
        assert all(chunk.request_id == "g-1" for chunk in chunks)
        assert sum(len(chunk.token_ids) for chunk in chunks) == final.usage.completion_tokens == 24
        assert final.usage.prompt_tokens > 20 and "".join(chunk.text for chunk in chunks).strip()
        assert trailing.get("x-replica-id") in REPLICA_IDS
        assert completion.request_id == "c-1" and completion.replica_id in REPLICA_IDS
        assert completion.finish_reason == "length" and completion.text.strip()
        assert len(completion.token_ids) == completion.usage.completion_tokens == 16
        assert ledger_left == 0

    run(body())


def test_list_replicas_and_health_follow_the_fleet() -> None:
    async def body() -> None:
        async with running_fleet() as fleet:
            router = fleet.router

            async def both_reported() -> bool:
                view = router.cluster.view(time.monotonic())
                return all(load.total_blocks > 0 for load in view.replicas)

            await eventually(both_reported)
            listed = await fleet.stub.ListReplicas(pb.ListReplicasRequest())
            none_listed = await fleet.stub.ListReplicas(pb.ListReplicasRequest(model="other-model"))
            serving = [
                (await fleet.health.Check(health_pb2.HealthCheckRequest(service=name))).status
                for name in ("", SERVICE_NAME)
            ]
            second = RouterGrpcServer(router)
            with pytest.raises(OSError, match="cannot listen"):
                await second.start("127.0.0.1", router.ports.grpc)
            await second.stop(0)

            for replica_id in REPLICA_IDS:
                router.fleet.drain(replica_id)

            async def not_serving() -> bool:
                reply = await fleet.health.Check(health_pb2.HealthCheckRequest())
                return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

            await eventually(not_serving, timeout_s=5.0)
            drained = await code_of(fleet.stub.Complete(generate_request()))
        assert [replica.id for replica in listed.replicas] == list(REPLICA_IDS)  # sorted by id
        for replica, agent in zip(listed.replicas, fleet.agents, strict=True):
            assert replica.address == f"127.0.0.1:{agent.ports.grpc}" and replica.transport == "agent"
            assert (replica.model, replica.gpu, replica.tier) == (MODEL, "a100-80gb", "cloud")
            assert replica.healthy and not replica.draining and not replica.circuit_open
            assert replica.HasField("kv_usage") and 0.0 <= replica.kv_usage < 1.0
            assert replica.queue_depth == replica.inflight_requests == 0 and replica.staleness_s < 5.0
        assert not none_listed.replicas
        assert serving == [health_pb2.HealthCheckResponse.SERVING] * 2
        assert drained == grpc.StatusCode.UNAVAILABLE

    run(body())


def test_explain_decides_without_sending_anything_to_a_replica() -> None:
    async def body() -> None:
        async with running_fleet() as fleet:
            before = [agent_request_count(agent) for agent in fleet.agents]
            explanation = await fleet.stub.Explain(generate_request("e-1", max_tokens=50))
            await asyncio.sleep(0.2)
            after = [agent_request_count(agent) for agent in fleet.agents]
            ledger_left = len(fleet.router.cluster.ledger)
            running = [agent.backend.latest_snapshot().num_running for agent in fleet.agents]
        assert before == after and ledger_left == 0 and running == [0, 0]
        assert explanation.request_id == "e-1" and explanation.policy
        assert explanation.replica_id in REPLICA_IDS and explanation.reason
        assert sorted(candidate.replica_id for candidate in explanation.candidates) == sorted(REPLICA_IDS)
        assert all(candidate.parts for candidate in explanation.candidates)
        assert all(0.0 <= part.score <= 1.0 for c in explanation.candidates for part in c.parts)
        assert explanation.ranked[0] == explanation.replica_id and set(explanation.ranked) == set(REPLICA_IDS)
        assert explanation.prompt_tokens > 20
        assert explanation.block_count == explanation.prompt_tokens // 16
        assert explanation.HasField("predicted_output") and explanation.predicted_output.mean > 0

    run(body())


def test_bad_requests_get_their_status_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with running_fleet() as fleet:
            stub, unknown = fleet.stub, generate_request(model="no-such-model")
            codes = {
                "generate unknown model": await code_of(_drain(stub.Generate(unknown))),
                "complete unknown model": await code_of(stub.Complete(unknown)),
                "explain unknown model": await code_of(stub.Explain(unknown)),
                "generate max_tokens 0": await code_of(_drain(stub.Generate(generate_request(max_tokens=0)))),
                "complete max_tokens 0": await code_of(stub.Complete(generate_request(max_tokens=0))),
                "empty prompt": await code_of(stub.Complete(generate_request(prompt=""))),
            }
            fleet_counts = [agent_request_count(agent) for agent in fleet.agents]
            no_model = await stub.Complete(generate_request(model="", max_tokens=4))

            async def overloaded(request: GenerateInput) -> AsyncIterator[GenerateEvent]:
                raise OverloadedError("every replica is at its limit", retry_after_s=3)
                yield  # an async generator, like the dispatcher's

            monkeypatch.setattr(fleet.router.dispatcher, "generate", overloaded)
            call = stub.Generate(generate_request())
            shed = await code_of(_drain(call))
            retry_after = dict(await call.trailing_metadata() or ()).get("retry-after")
        assert codes == {
            "generate unknown model": grpc.StatusCode.NOT_FOUND,
            "complete unknown model": grpc.StatusCode.NOT_FOUND,
            "explain unknown model": grpc.StatusCode.NOT_FOUND,
            "generate max_tokens 0": grpc.StatusCode.INVALID_ARGUMENT,
            "complete max_tokens 0": grpc.StatusCode.INVALID_ARGUMENT,
            "empty prompt": grpc.StatusCode.INVALID_ARGUMENT,
        }
        assert sum(fleet_counts) == 1  # only the empty prompt reached a replica, which refused it
        assert no_model.usage.completion_tokens == 4  # the fleet's only model stands in
        assert shed == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after == "3"

    run(body())


async def _drain(call: grpc.aio.UnaryStreamCall[Any, Any]) -> list[object]:
    return [chunk async for chunk in call]


def test_a_client_that_cancels_aborts_its_request_on_the_replica() -> None:
    async def body() -> None:
        async with running_fleet() as fleet:
            call = fleet.stub.Generate(generate_request("leaver", max_tokens=8000))
            first = await call.read()
            assert isinstance(first, replica_pb.GenerateChunk) and not first.finished
            assert len(fleet.router.cluster.ledger) == 1
            call.cancel()

            async def released() -> bool:
                engines_idle = all(agent.backend.latest_snapshot().num_running == 0 for agent in fleet.agents)
                return engines_idle and len(fleet.router.cluster.ledger) == 0

            await eventually(released, timeout_s=5.0)
            aborted = sum(agent_request_count(agent, "abort") for agent in fleet.agents)
            finished = sum(agent_request_count(agent, "length") for agent in fleet.agents)
        assert aborted == 1 and finished == 0

    run(body())
