"""The router end to end: the openai SDK → router (HTTP) → real sim agents (gRPC), on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from router.service.local_fleet import FleetGroup, FleetSpec, fleet_from_gpus
from tests.router.service.fleet_thread import FleetThread

MODEL = "llama-3.1-8b"
PROMPT = "Explain why a router should balance GPUs of different speeds by time, not by count. " * 3


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetThread]:
    with FleetThread(fleet_from_gpus(["h100-80gb", "a100-80gb", "v100-32gb"], None, MODEL)) as running:
        yield running


def metric(fleet: FleetThread, name: str, **labels: str) -> float:
    text = fleet.run(_get(fleet.url + "/metrics"))
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def _get(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return await reply.text()


def test_chat_and_completions_whole_and_streamed_through_the_router(fleet: FleetThread) -> None:
    client = fleet.client()
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=12
    )
    assert chat.choices[0].message.content and chat.usage and chat.usage.completion_tokens <= 12
    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 20
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=30, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30
    streamed_chat = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
    )
    assert streamed_chat[0].choices[0].delta.role == "assistant"
    assert streamed_chat[-1].choices[0].finish_reason in ("stop", "length")


def test_models_ready_and_metrics(fleet: FleetThread) -> None:
    models = fleet.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert fleet.run(_get(fleet.url + "/ready")) == '{"status":"ready"}'
    fleet.client().completions.create(model=MODEL, prompt="hi", max_tokens=3)
    assert metric(fleet, "fleetroute_requests_total") >= 1
    assert metric(fleet, "fleetroute_decision_seconds_count", policy="sal") >= 1
    assert metric(fleet, "fleetroute_replica_healthy") == 3


def test_a_burst_is_spread_over_the_fleet_by_the_ledger(fleet: FleetThread) -> None:
    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="none", max_retries=0, timeout=60)

        async def one(i: int) -> str:
            reply = await client.completions.create(model=MODEL, prompt=f"{i} " + PROMPT * 4, max_tokens=8)
            return reply.choices[0].text

        texts = await asyncio.gather(*(one(i) for i in range(100)))
        await client.close()
        return list(texts)

    before = {r: metric(fleet, "fleetroute_requests_total", replica=r) for r in _replica_ids(fleet)}
    assert len(asyncio.run(asyncio.wait_for(burst(), 60))) == 100
    after = {r: metric(fleet, "fleetroute_requests_total", replica=r) for r in _replica_ids(fleet)}
    served = {r: after[r] - before[r] for r in after}
    assert sum(served.values()) == 100
    assert max(served.values()) < 100 and sum(1 for v in served.values() if v > 0) >= 2
    assert served["h100-80gb-0"] > served["v100-32gb-2"]  # balanced by speed, not by count


def _replica_ids(fleet: FleetThread) -> list[str]:
    return [d.replica_id for d in fleet.call(fleet.router.fleet.descriptors)]


def test_a_client_that_disconnects_aborts_its_request_on_the_agent(fleet: FleetThread) -> None:
    body = json.dumps(
        {"model": MODEL, "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    )
    port = fleet.router.ports.http
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = (
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        sock.sendall(request.encode())
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
        assert fleet.wait_until(lambda: sum(fleet.engine_requests()) == 1)
    assert fleet.wait_until(lambda: sum(fleet.engine_requests()) == 0)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -1}).encode(), 400),
        (json.dumps({"model": "gpt-9", "prompt": "x"}).encode(), 404),
        (json.dumps({"model": MODEL, "prompt": "x " * 40000, "max_tokens": 5}).encode(), 400),
        (json.dumps({"model": MODEL, "prompt": "x" * (9 * 1024 * 1024)}).encode(), 413),
    ],
)
def test_bad_requests_get_openai_errors(fleet: FleetThread, body: bytes, status: int) -> None:
    got_status, payload = fleet.run(_post(fleet.url + "/v1/completions", body))
    assert got_status == status and payload["error"]["message"]


async def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    import aiohttp

    request_headers = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=request_headers) as r:
        text = await r.text()
        payload = json.loads(text) if text.startswith("{") else {"raw": text}
        payload["headers"] = dict(r.headers)
        return r.status, payload


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["model", "prompt", "max_tokens", "stream", "temperature", "n", "messages", "seed"]),
        st.one_of(st.none(), st.integers(-5, 10**9), st.text(max_size=20), st.booleans(),
                  st.floats(allow_nan=True), st.lists(st.integers(-3, 200000), max_size=4)),
    )
)  # fmt: skip
def test_fuzzed_bodies_never_get_a_server_error(fleet: FleetThread, body: dict[str, Any]) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, _ = fleet.run(_post(fleet.url + path, json.dumps(body).encode()))
        assert status < 500, (path, body)


def test_admission_control_sheds_with_429_and_drained_fleets_answer_503() -> None:
    spec = FleetSpec(replicas=[FleetGroup(gpu="a100-80gb")])
    with FleetThread(spec, speedup=0.2, admission={"max_kv_usage": 1e-9, "retry_after_s": 2}) as small:
        client = small.client()
        stream = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=500, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(stream))
        status, payload = small.run(
            _post(small.url + "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode())
        )
        assert status == 429 and "limit" in payload["error"]["message"]
        assert payload["headers"]["Retry-After"] == "2"
        stream.close()
        replica = _replica_ids(small)[0]
        small.run(_post(f"{small.url}/admin/replicas/{replica}/drain", b""))
        status, payload = small.run(
            _post(small.url + "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode())
        )
        assert status == 503 and payload["error"]["code"] == "no_healthy_replica"
        assert small.run(_get(small.url + "/ready")).startswith('{"status":"no healthy')


def test_a_replica_that_refuses_before_the_first_token_is_retried_elsewhere() -> None:
    spec = fleet_from_gpus(["a100-80gb", "a100-80gb"], None, MODEL)
    with FleetThread(spec, policy="round_robin") as pair:
        dead = pair.fleet.agents[0]
        assert dead.grpc is not None
        pair.run(dead.grpc.stop(0))
        client = pair.client()
        answers = [
            client.completions.create(model=MODEL, prompt=f"{i} hello", max_tokens=4) for i in range(4)
        ]
        assert all(a.choices[0].text for a in answers)
        assert metric(pair, "fleetroute_retries_total") >= 1


def test_no_retry_after_the_first_token() -> None:
    spec = fleet_from_gpus(["a100-80gb", "a100-80gb"], None, MODEL)
    with FleetThread(spec, speedup=1.0) as pair:
        client = pair.client()
        stream = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=3000, stream=True, extra_body={"ignore_eos": True}
        )
        iterator = iter(stream)
        first = next(iterator)
        busy = [i for i, n in enumerate(pair.engine_requests()) if n == 1]
        assert len(busy) == 1
        busy_grpc = pair.fleet.agents[busy[0]].grpc
        assert busy_grpc is not None
        pair.run(busy_grpc.stop(0))
        with pytest.raises(openai.APIError):
            for _ in iterator:
                pass
        assert first.choices[0].text
        assert metric(pair, "fleetroute_retries_total") == 0
        assert pair.engine_requests()[1 - busy[0]] == 0  # the other replica never received it
        assert metric(pair, "fleetroute_requests_total", status="failed") == 1


def test_a_request_id_already_in_flight_is_refused(fleet: FleetThread) -> None:
    client = fleet.client()
    headers = {"X-Request-Id": "twice"}
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=2000, stream=True, extra_body={"ignore_eos": True},
        extra_headers=headers,
    )  # fmt: skip
    next(iter(stream))
    with pytest.raises(openai.BadRequestError, match="already in flight"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_headers=headers)
    stream.close()
