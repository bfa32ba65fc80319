"""The agent's OpenAI HTTP front door on a real loopback socket, driven by the openai SDK.

Each server runs on its own thread and event loop; tests talk to it from the main thread and read
engine state through ``ServedAgent.state`` (which runs on the server's loop).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import openai
import pydantic
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from protos.snapshot import ReplicaSnapshot
from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig, ExecutorKind
from replica_agent.factory import build_backend
from replica_agent.service.backend import GenerateInput
from replica_agent.service.http_app import build_http_app, start_http_server
from replica_agent.service.metrics import AgentMetrics

MODEL = "llama-3.1-8b"
PROMPT = "Explain how a router picks a replica for each request in a GPU fleet. " * 3
T = TypeVar("T")


class ServedAgent:
    """A built-in sim backend behind the HTTP app, on a background thread with its own loop."""

    def __init__(self, instant: bool = True, **settings: Any) -> None:
        self.config = AgentConfig(executor=ExecutorKind.SIM, gpu="a100-80gb", model=MODEL, **settings)
        self.instant = instant
        self.seen: list[GenerateInput] = []
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> ServedAgent:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the test server did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        try:
            backend = build_backend(self.config, instant=self.instant)
            assert isinstance(backend, BuiltinBackend)
            self.backend = backend
            original = backend.generate

            def recording(request: GenerateInput) -> Any:
                self.seen.append(request)
                return original(request)

            backend.generate = recording  # type: ignore[method-assign]
            await backend.start()
            self.metrics = AgentMetrics(backend.info, backend.latest_snapshot)
            app = build_http_app(backend, self.metrics)
            app.router.add_get("/test/nodelay", _nodelay)
            self.runner, self.port = await start_http_server(app, "127.0.0.1", 0)
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
        except BaseException as error:
            self._failure = error
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await backend.stop(0.5)
            await self.runner.cleanup()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def state(self) -> tuple[int, ReplicaSnapshot]:
        """Requests in the engine and the latest snapshot, read on the server's loop."""

        async def read() -> tuple[int, ReplicaSnapshot]:
            return self.backend.loop.engine.num_requests, self.backend.latest_snapshot()

        return self.run(read())

    def assert_idle(self) -> None:
        """No request in the engine, and a snapshot (published within a few ms) shows every block free."""
        deadline = time.monotonic() + 1.0
        requests, snapshot = self.state()
        while snapshot.free_blocks != snapshot.total_blocks and time.monotonic() < deadline:
            time.sleep(0.002)
            requests, snapshot = self.state()
        assert requests == 0
        assert snapshot.free_blocks == snapshot.total_blocks

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1", api_key="x", max_retries=0, timeout=10
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, None, headers)

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }


async def _nodelay(request: web.Request) -> web.Response:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return web.Response(text=str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) if sock else -1))


def extra(model: pydantic.BaseModel, name: str) -> Any:
    """A field the OpenAI types do not declare (vLLM's extensions)."""
    return (model.model_extra or {})[name]


def sample(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in scraped.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


@pytest.fixture(scope="module")
def agent() -> Iterator[ServedAgent]:
    with ServedAgent(instant=True) as served:
        yield served


# -- generation through the openai SDK --------------------------------------------------------------
def test_completion_returns_openai_format_with_usage(agent: ServedAgent) -> None:
    completion = agent.client().completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, extra_body={"ignore_eos": True}
    )
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion"
    assert completion.model == MODEL
    assert abs(completion.created - time.time()) < 60
    [choice] = completion.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens > 10
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens is not None
    agent.assert_idle()


def test_completion_defaults_to_sixteen_tokens_and_accepts_token_ids(agent: ServedAgent) -> None:
    completion = agent.client().completions.create(
        model=MODEL, prompt=[101, 202, 303, 404], extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == 16


def test_chat_completion_and_request_headers_reach_the_backend(agent: ServedAgent) -> None:
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    raw = agent.client().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
            },
        ],
        max_completion_tokens=9,
        temperature=0.5,
        seed=7,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Request-Id": "chat-req-1", "traceparent": traceparent},
    )
    chat = raw.parse()
    assert raw.headers["x-request-id"] == "chat-req-1"
    assert chat.id == "chatcmpl-chat-req-1" and chat.object == "chat.completion"
    [choice] = chat.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 9
    seen = next(request for request in agent.seen if request.request_id == "chat-req-1")
    assert seen.messages == (("system", "Be brief."), ("user", "Hello\nthere"))
    assert (seen.max_tokens, seen.temperature, seen.seed, seen.ignore_eos) == (9, 0.5, 7, True)
    # The same trace; the parent is the caller's span, or the agent's own when a tracer is configured.
    assert seen.traceparent is not None and seen.traceparent.split("-")[1] == "a" * 32


def test_chat_without_max_tokens_gets_the_rest_of_the_context_capped() -> None:
    with ServedAgent(instant=True, output_lengths="fixed:5") as served:
        chat = served.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert served.seen[-1].max_tokens == 4096
        assert chat.choices[0].finish_reason in ("stop", "length")


def test_streamed_completion_tokens_add_up_to_the_usage(agent: ServedAgent) -> None:
    stream = agent.client().completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    chunks = list(stream)
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(chunk.usage is None and len(chunk.choices) == 1 for chunk in content)
    assert {chunk.id for chunk in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
    token_counts = [len(extra(chunk.choices[0], "token_ids")) for chunk in content]
    assert all(count >= 1 for count in token_counts)
    assert sum(token_counts) == last.usage.completion_tokens == 30
    assert [chunk.choices[0].finish_reason for chunk in content][-1] == "length"
    assert all(chunk.choices[0].finish_reason is None for chunk in content[:-1])
    agent.assert_idle()


def test_streamed_chat_starts_with_the_role_and_ends_with_usage(agent: ServedAgent) -> None:
    stream = agent.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    first, *content, last = list(stream)
    assert first.object == "chat.completion.chunk" and first.id.startswith("chatcmpl-")
    assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
    assert all(chunk.choices[0].delta.content for chunk in content)
    tokens = sum(len(extra(chunk.choices[0], "token_ids")) for chunk in content)
    assert last.usage is not None and tokens == last.usage.completion_tokens == 20
    assert content[-1].choices[0].finish_reason == "length"


def test_stream_without_usage_option_has_no_usage_chunk(agent: ServedAgent) -> None:
    chunks = list(
        agent.client().completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=5, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert chunks and all(len(chunk.choices) == 1 for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


# -- the other endpoints ------------------------------------------------------------------------------
def test_models_lists_the_served_model_with_its_context_length(agent: ServedAgent) -> None:
    models = agent.client().models.list()
    [model] = models.data
    assert model.id == MODEL and model.object == "model" and model.owned_by
    assert extra(model, "max_model_len") == agent.backend.info.max_model_len


def test_health_is_ok_while_serving_and_503_while_draining() -> None:
    with ServedAgent(instant=True) as served:
        assert served.get("/health")[0] == 200
        served.run(served.backend.loop.drain(0.0))
        status, _, body = served.get("/health")
        assert status == 503 and json.loads(body)["status"] == "draining"
        with pytest.raises(openai.InternalServerError) as caught:
            served.client().completions.create(model=MODEL, prompt="hi", max_tokens=3)
        assert caught.value.status_code == 503


def test_sockets_have_tcp_nodelay(agent: ServedAgent) -> None:
    status, _, body = agent.get("/test/nodelay")
    assert status == 200 and int(body) > 0


def test_metrics_export_vllm_names_matching_the_latest_snapshot(agent: ServedAgent) -> None:
    agent.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    agent.assert_idle()  # the finish snapshot is published; nothing changes until the next request
    _, snapshot = agent.state()
    status, headers, _ = agent.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    scraped = agent.scrape()
    vllm = {"model_name": MODEL}
    assert sample(scraped, "vllm:num_requests_running", **vllm) == snapshot.num_running == 0
    assert sample(scraped, "vllm:num_requests_waiting", **vllm) == snapshot.num_waiting
    assert sample(scraped, "vllm:kv_cache_usage_perc", **vllm) == snapshot.cache_fill
    assert sample(scraped, "vllm:gpu_cache_usage_perc", **vllm) == snapshot.cache_fill
    assert sample(scraped, "vllm:num_preemptions_total", **vllm) == snapshot.preemptions_total
    info = sample(scraped, "vllm:cache_config_info", block_size=str(snapshot.block_size))
    assert info == 1.0
    assert sample(scraped, "vllm:cache_config_info", num_gpu_blocks=str(snapshot.total_blocks)) == 1.0
    assert sample(scraped, "fleetroute_agent_kv_blocks_total") == snapshot.total_blocks
    assert sample(scraped, "fleetroute_agent_kv_blocks_free") == snapshot.free_blocks
    assert sample(scraped, "vllm:prompt_tokens_total", **vllm) > 0
    assert sample(scraped, "vllm:generation_tokens_total", **vllm) > 0
    assert sample(scraped, "vllm:time_to_first_token_seconds_count", **vllm) > 0
    assert sample(scraped, "vllm:e2e_request_latency_seconds_count", **vllm) > 0
    for name in ("vllm:time_per_output_token_seconds_count", "vllm:inter_token_latency_seconds_count"):
        assert sample(scraped, name, **vllm) > 0
    successes = [v for (n, _), v in scraped.items() if n == "vllm:request_success_total"]
    assert sum(successes) > 0


# -- malformed requests --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"max_tokens": -3}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 10**9}, "max_tokens", "maximum context length"),
        ({"prompt": "word " * 9000}, "prompt", "maximum context length"),
        ({"prompt": ["one", "two"]}, "prompt", "only one prompt"),
        ({"max_tokens": "many"}, "max_tokens", "valid integer"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"n": 2}, "n", "n=1"),
        ({"prompt": [1, "x"]}, "prompt", "token ids"),
    ],
)
def test_invalid_completion_requests_are_400s_that_leave_the_engine_untouched(
    agent: ServedAgent, fields: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": MODEL, "prompt": "hello", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        agent.client().completions.create(**body)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"]
    agent.assert_idle()


def test_invalid_chat_messages_are_400s(agent: ServedAgent) -> None:
    client = agent.client()
    for messages, words in (
        ([], "at least 1"),
        ([{"role": "robot", "content": "hi"}], "'user'"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "text content"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        assert words in caught.value.message
    agent.assert_idle()


def test_unknown_model_is_a_404(agent: ServedAgent) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        agent.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    agent.assert_idle()


@pytest.mark.parametrize(
    ("body", "words"),
    [(b"{not json", "not valid JSON"), (b"", "not valid JSON"), (b"[1, 2]", "JSON object")],
)
def test_bodies_that_are_not_json_objects_are_400s(agent: ServedAgent, body: bytes, words: str) -> None:
    status, headers, raw = agent.request(
        "POST", "/v1/completions", body, {"Content-Type": "application/json"}
    )
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]
    agent.assert_idle()


def test_oversized_bodies_and_unknown_paths_get_json_errors(agent: ServedAgent) -> None:
    big = json.dumps({"model": MODEL, "prompt": "x" * (9 * 1024 * 1024)}).encode()
    status, _, raw = agent.request("POST", "/v1/completions", big, {"Content-Type": "application/json"})
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    status, _, raw = agent.get("/v1/nothing")
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"
    status, _, raw = agent.get("/v1/completions")
    assert status == 405 and "error" in json.loads(raw)
    agent.assert_idle()


# -- clients that go away, and counting each request once ---------------------------------------------
def open_request(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before {marker!r}: {data!r}"
        data += piece
    return data


def seconds_until_idle(served: ServedAgent, timeout_s: float = 2.0) -> float:
    """How long until the engine holds no request and every block is free again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        requests, snapshot = served.state()
        if requests == 0 and snapshot.free_blocks == snapshot.total_blocks:
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError(f"the request still holds blocks {timeout_s} s after its client left")


def test_a_client_that_leaves_mid_stream_frees_its_blocks_and_counts_one_abort() -> None:
    with ServedAgent(instant=False, speedup=0.5) as served:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        sock = open_request(served.port, "/v1/completions", body)
        try:
            read_until(sock, b'"text"')
            requests, snapshot = served.state()
            assert requests == 1 and snapshot.free_blocks < snapshot.total_blocks
            scraped = served.scrape()
            assert sample(scraped, "vllm:num_requests_running", model_name=MODEL) == 1
            assert sample(scraped, "fleetroute_agent_requests_in_flight", front_door="http") == 1
        finally:
            sock.close()
        assert seconds_until_idle(served) < 0.1
        time.sleep(0.05)
        scraped = served.scrape()
        assert (
            sample(scraped, "fleetroute_agent_requests_total", front_door="http", finish_reason="abort") == 1
        )
        assert sample(scraped, "vllm:request_success_total", finished_reason="abort") == 1
        assert sample(scraped, "vllm:request_success_total", finished_reason="length") == 0
        assert sample(scraped, "fleetroute_agent_requests_in_flight", front_door="http") == 0


def test_a_client_that_leaves_a_whole_response_request_aborts_it() -> None:
    with ServedAgent(instant=False, speedup=0.5) as served:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True}
        sock = open_request(served.port, "/v1/completions", body)
        try:
            deadline = time.monotonic() + 2.0
            while served.state()[0] == 0:
                assert time.monotonic() < deadline, "the request never reached the engine"
                time.sleep(0.005)
        finally:
            sock.close()
        assert seconds_until_idle(served) < 0.1
        time.sleep(0.05)
        scraped = served.scrape()
        assert (
            sample(scraped, "fleetroute_agent_requests_total", front_door="http", finish_reason="abort") == 1
        )


def test_finished_and_refused_requests_are_counted_once() -> None:
    with ServedAgent(instant=True) as served:
        client = served.client()
        for _ in range(3):
            client.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=6, extra_body={"ignore_eos": True}
            )
        list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                stream=True,
                extra_body={"ignore_eos": True},
            )
        )
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="hi")
        time.sleep(0.05)
        scraped = served.scrape()
        door = {"front_door": "http"}
        assert sample(scraped, "fleetroute_agent_requests_total", finish_reason="length", **door) == 4
        assert (
            sample(scraped, "fleetroute_agent_rejected_requests_total", kind="model_not_found", **door) == 1
        )
        assert sample(scraped, "vllm:request_success_total", finished_reason="length") == 4
        assert sample(scraped, "vllm:request_success_total", finished_reason="abort") == 0
        assert sample(scraped, "vllm:e2e_request_latency_seconds_count", model_name=MODEL) == 4
        assert sample(scraped, "vllm:generation_tokens_total", model_name=MODEL) == 24
        assert sample(scraped, "fleetroute_agent_requests_in_flight", **door) == 0
