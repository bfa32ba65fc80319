"""The router in front of plain OpenAI-compatible servers (``transport: http``), end to end: the openai
SDK → router (HTTP) → stand-ins for vLLM's server, load scraped from their ``/metrics``, on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.config import ReplicaConfig, RouterConfig
from router.service.router import Router
from tests.agent.fake_vllm import WORDS, FakeVllm

T = TypeVar("T")
GPU = "a100-80gb"
ADMIN_KEY = "admin-secret"
WAIT_S = 3.0


def answer_text(tokens: int) -> str:
    """What a fake answers in ``tokens`` tokens."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


class RouterOverFakes:
    """``fakes`` fake vLLM servers, the first ``joined`` of them configured as the router's replicas,
    all on a background thread's event loop; the test's thread drives them with the openai SDK."""

    def __init__(self, fakes: int = 2, joined: int | None = None, **router_settings: Any) -> None:
        self._fake_count = fakes
        self._joined = fakes if joined is None else joined
        # The fake has no /health: a health check would count against it, so none runs during a test.
        self._settings = {"http_port": 0, "grpc_port": 0, "health_check_interval_s": 60.0, **router_settings}
        self.fakes: list[FakeVllm] = []
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> RouterOverFakes:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the router and its fakes did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.fakes.extend(FakeVllm(token_delay_s=0.01) for _ in range(self._fake_count))
            for fake in self.fakes:
                await fake.start()
            replicas = [self.replica_config(index) for index in range(self._joined)]
            self.router = Router(RouterConfig(replicas=replicas, **self._settings))
            await self.router.start(join_timeout_s=5.0)
        except BaseException as error:
            self._failure = error
            raise
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.router.stop()
            for fake in self.fakes:
                await fake.stop()

    def replica_config(self, index: int) -> ReplicaConfig:
        fake = self.fakes[index]
        return ReplicaConfig(
            transport="http", address=fake.url, id=f"fake-{index}", model=fake.model, gpu=GPU
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.router.ports.http}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = WAIT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], T]) -> T:
        async def on_loop() -> T:
            return function()

        return self.run(on_loop())

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=5)

    def http(
        self, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None
    ) -> tuple[int, Any]:
        async def send() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with (
                aiohttp.ClientSession() as session,
                session.request(method, self.url + path, json=body, headers=headers) as reply,
            ):
                text = await reply.text()
                return reply.status, json.loads(text) if reply.content_type == "application/json" else text

        return self.run(send())

    def metric(self, name: str, **labels: str) -> float:
        status, text = self.http("GET", "/metrics")
        assert status == 200
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def running_in_view(self, replica_id: str) -> int:
        load = self.call(lambda: self.router.cluster.view(time.monotonic()).get(replica_id))
        return -1 if load is None else load.num_running

    def serving(self, request_id: str) -> list[int]:
        """Indexes of the fakes that received ``request_id``."""
        return self.call(
            lambda: [
                i
                for i, fake in enumerate(self.fakes)
                if any(r.request_id == request_id for r in fake.requests)
            ]
        )

    def disconnected(self, index: int, request_id: str) -> bool:
        return self.call(lambda: self.fakes[index].seen(request_id).disconnected)


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(scope="module")
def pair() -> Iterator[RouterOverFakes]:
    with RouterOverFakes() as running:
        yield running


def test_the_fakes_joined_with_their_model(pair: RouterOverFakes) -> None:
    models = pair.client().models.list()
    assert [(m.id, (m.model_extra or {}).get("max_model_len")) for m in models.data] == [
        ("fake-llama-8b", 4096)
    ]
    status, listing = pair.http("GET", "/admin/replicas")
    assert status == 200
    assert [(r["id"], r["transport"], r["gpu"], r["healthy"]) for r in listing["replicas"]] == [
        ("fake-0", "http", GPU, True),
        ("fake-1", "http", GPU, True),
    ]


def test_whole_answers_with_the_servers_usage(pair: RouterOverFakes) -> None:
    client = pair.client()
    completion = client.completions.create(
        model="fake-llama-8b",
        prompt="Route me, please.",
        max_tokens=20,
        extra_headers={"X-Request-Id": "w-1"},
    )
    assert completion.choices[0].text == answer_text(8) and completion.choices[0].finish_reason == "stop"
    (served,) = pair.serving("w-1")
    seen_usage = pair.call(lambda: pair.fakes[served].seen("w-1").usage)
    assert completion.usage is not None and seen_usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        seen_usage["prompt_tokens"],
        seen_usage["completion_tokens"],
    )
    chat = client.chat.completions.create(
        model="fake-llama-8b", messages=[{"role": "user", "content": "Hello there"}], max_tokens=3
    )
    assert chat.choices[0].message.content == answer_text(3) and chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 3 and chat.usage.prompt_tokens > 0


def test_streamed_answers_with_usage(pair: RouterOverFakes) -> None:
    client = pair.client()
    chunks = list(
        client.completions.create(
            model="fake-llama-8b", prompt="Stream it.", max_tokens=12, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer_text(12)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    chat_chunks = list(
        client.chat.completions.create(
            model="fake-llama-8b", messages=[{"role": "user", "content": "Hi"}], max_tokens=16, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices)
    assert text == answer_text(8)
    assert [c.choices[0].finish_reason for c in chat_chunks if c.choices][-1] == "stop"
    assert chat_chunks[-1].usage is not None and chat_chunks[-1].usage.completion_tokens == 8


def test_a_slow_stream_shows_in_the_router_view_from_the_fakes_metrics(pair: RouterOverFakes) -> None:
    stream = pair.client().completions.create(
        model="fake-llama-8b", prompt="Take your time.", max_tokens=2000, stream=True,
        extra_body={"ignore_eos": True}, extra_headers={"X-Request-Id": "slow-1"},
    )  # fmt: skip
    with stream:
        next(iter(stream))
        (busy,) = pair.serving("slow-1")
        busy_id, idle_id = f"fake-{busy}", f"fake-{1 - busy}"
        assert wait_until(
            lambda: pair.running_in_view(busy_id) == 1 and pair.running_in_view(idle_id) == 0, timeout=0.5
        )
    assert wait_until(lambda: pair.running_in_view(busy_id) == 0)


def test_a_client_that_disconnects_mid_stream_is_seen_by_the_fake(pair: RouterOverFakes) -> None:
    gone_before = pair.metric("fleetroute_requests_total", status="client_gone")
    stream = pair.client().chat.completions.create(
        model="fake-llama-8b", messages=[{"role": "user", "content": "Talk forever"}], max_tokens=2000,
        stream=True, extra_body={"ignore_eos": True}, extra_headers={"X-Request-Id": "gone-1"},
    )  # fmt: skip
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    stream.close()
    (served,) = pair.serving("gone-1")
    assert wait_until(lambda: pair.disconnected(served, "gone-1"))
    assert not pair.call(lambda: pair.fakes[served].seen("gone-1").finished)
    assert wait_until(
        lambda: pair.metric("fleetroute_requests_total", status="client_gone") == gone_before + 1
    )


def test_a_fake_that_is_down_before_the_first_token_is_retried_on_the_other() -> None:
    with RouterOverFakes(policy="round_robin") as fleet:
        fleet.run(fleet.fakes[0].stop())
        client = fleet.client()
        for i in range(4):
            answer = client.completions.create(
                model="fake-llama-8b", prompt=f"{i} hello", max_tokens=4,
                extra_headers={"X-Request-Id": f"retry-{i}"},
            )  # fmt: skip
            assert answer.choices[0].text == answer_text(4)
            assert fleet.serving(f"retry-{i}") == [1]
        assert fleet.metric("fleetroute_retries_total") >= 1
        assert fleet.metric("fleetroute_requests_total", replica="fake-0", status="refused") >= 1
        assert fleet.metric("fleetroute_requests_total", replica="fake-1", status="length") == 4


def test_replicas_are_added_and_removed_at_run_time_with_the_admin_key() -> None:
    with RouterOverFakes(fakes=2, joined=1, policy="round_robin", admin_key=ADMIN_KEY) as fleet:
        spare = fleet.replica_config(1)
        body = {
            "address": spare.address,
            "transport": "http",
            "id": "fake-1",
            "model": spare.model,
            "gpu": GPU,
        }

        assert fleet.http("GET", "/admin/replicas")[0] == 401
        assert fleet.http("GET", "/admin/replicas", key="wrong")[0] == 401
        assert fleet.http("POST", "/admin/replicas", body)[0] == 401
        assert fleet.http("DELETE", "/admin/replicas/fake-0")[0] == 401

        def listed() -> list[tuple[str, str, str, str]]:
            status, listing = fleet.http("GET", "/admin/replicas", key=ADMIN_KEY)
            assert status == 200
            return [(r["id"], r["address"], r["transport"], r["gpu"]) for r in listing["replicas"]]

        assert listed() == [("fake-0", fleet.fakes[0].url, "http", GPU)]

        assert fleet.http("POST", "/admin/replicas", body, key=ADMIN_KEY) == (201, {"added": "fake-1"})
        assert listed() == [
            ("fake-0", fleet.fakes[0].url, "http", GPU),
            ("fake-1", spare.address, "http", GPU),
        ]
        assert fleet.http("POST", "/admin/replicas", body, key=ADMIN_KEY)[0] == 409
        client = fleet.client()
        for i in range(2):
            client.completions.create(
                model="fake-llama-8b", prompt="x", max_tokens=2, extra_headers={"X-Request-Id": f"a-{i}"}
            )
        assert sorted(fleet.serving("a-0") + fleet.serving("a-1")) == [0, 1]  # the new one takes its turn

        assert fleet.http("DELETE", "/admin/replicas/fake-1", key=ADMIN_KEY) == (200, {"removed": "fake-1"})
        assert listed() == [("fake-0", fleet.fakes[0].url, "http", GPU)]
        assert fleet.http("DELETE", "/admin/replicas/fake-1", key=ADMIN_KEY)[0] == 404
        for i in range(2):
            client.completions.create(
                model="fake-llama-8b", prompt="x", max_tokens=2, extra_headers={"X-Request-Id": f"r-{i}"}
            )
            assert fleet.serving(f"r-{i}") == [0]


def test_a_replica_silent_past_the_first_token_timeout_gives_504() -> None:
    with RouterOverFakes(fakes=1, timeouts={"first_token_s": 0.2}) as one:
        one.fakes[0].token_delay_s = 1.0
        with pytest.raises(openai.APIStatusError) as raised:
            one.client().completions.create(model=one.fakes[0].model, prompt="hello", max_tokens=2)
        assert raised.value.status_code == 504
        assert "0.2" in str(raised.value.message)
