"""A stand-in for vLLM's OpenAI-compatible server on loopback, speaking its documented dialect.

``/v1/models`` (with ``max_model_len``), streaming ``/v1/completions`` and ``/v1/chat/completions``
(SSE ``data:`` lines, ``[DONE]``, a usage chunk under ``stream_options.include_usage`` with
``prompt_tokens_details.cached_tokens``), OpenAI-format error bodies, and ``/metrics`` in Prometheus
text with vLLM's names, labelled ``model_name``. Its gauges follow the requests it really serves,
at most ``max_num_seqs`` at a time, and it records every request and every client that went away.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

WORDS = ("the", "router", "sends", "each", "request", "to", "a", "replica", "with", "room")
LABELS = ("model_name", "engine")


@dataclass
class SeenRequest:
    request_id: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    usage: dict[str, Any] | None = None
    finished: bool = False
    disconnected: bool = False


@dataclass
class FakeVllm:
    model: str = "fake-llama-8b"
    max_model_len: int = 4096
    token_delay_s: float = 0.0
    answer_tokens: int = 8
    num_gpu_blocks: int = 1000
    block_size: int = 16
    max_num_seqs: int = 8
    kv_metric: str = "vllm:kv_cache_usage_perc"
    fail_metrics: bool = False
    requests: list[SeenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self._running: dict[str, int] = {}  # request id -> tokens in its KV cache
        self._num_waiting = 0
        self._cached_prefixes: set[int] = set()
        self._slots = asyncio.Semaphore(self.max_num_seqs)
        self._runner: web.AppRunner | None = None
        self.url = ""
        gauges = {
            "running": ("vllm:num_requests_running", "Number of requests in model execution batches."),
            "waiting": ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
            "kv": (self.kv_metric, "KV-cache usage. 1 means 100 percent usage."),
        }
        self._gauges = {k: Gauge(n, d, LABELS, registry=self.registry) for k, (n, d) in gauges.items()}
        counters = ("num_preemptions", "prompt_tokens", "generation_tokens", "prefix_cache_queries",
                    "prefix_cache_hits")  # fmt: skip
        self._counters = {
            name: Counter(f"vllm:{name}", name.replace("_", " "), LABELS, registry=self.registry)
            for name in counters
        }
        info_labels = ("block_size", "num_gpu_blocks", "enable_prefix_caching", "engine")
        info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", info_labels,
                     registry=self.registry)  # fmt: skip
        info.labels(str(self.block_size), str(self.num_gpu_blocks), "True", "0").set(1)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def num_running(self) -> int:
        return len(self._running)

    def seen(self, request_id: str) -> SeenRequest:
        return next(r for r in self.requests if r.request_id == request_id)

    # -- endpoints ---------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                "root": self.model, "parent": None, "max_model_len": self.max_model_len}  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.fail_metrics:
            return web.Response(status=503, text="engine is restarting")
        used = sum(math.ceil(tokens / self.block_size) for tokens in self._running.values())
        values: dict[str, float] = {"running": len(self._running), "waiting": self._num_waiting}
        values["kv"] = min(1.0, used / self.num_gpu_blocks)
        for key, value in values.items():
            self._gauges[key].labels(self.model, "0").set(value)
        text = generate_latest(self.registry)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        if body.get("model") != self.model:
            return error(404, f"The model `{body.get('model')}` does not exist.", "model")
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return error(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        prompt = prompt_tokens(body, chat)
        if prompt is None:
            return error(400, "messages must be a list of {role, content}" if chat else "prompt is invalid")
        if len(prompt) + max_tokens > self.max_model_len:
            return error(400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                         f"you requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, "
                         f"{max_tokens} in the completion). Please reduce the length of the messages or "
                         "completion.")  # fmt: skip
        request_id = request.headers.get("X-Request-Id", f"fake-{len(self.requests)}")
        seen = SeenRequest(request_id, request.path, body, dict(request.headers))
        self.requests.append(seen)
        self._num_waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._num_waiting -= 1
        try:
            return await self._stream(request, seen, prompt, max_tokens, chat)
        finally:
            self._running.pop(request_id, None)
            self._slots.release()

    async def _stream(
        self, request: web.Request, seen: SeenRequest, prompt: list[str], max_tokens: int, chat: bool
    ) -> web.StreamResponse:
        cached = self._prefill(seen.request_id, prompt)
        ignore_eos = seen.body.get("ignore_eos") is True
        count = max_tokens if ignore_eos else min(max_tokens, self.answer_tokens)
        reason = "length" if count == max_tokens else "stop"
        include_usage = (seen.body.get("stream_options") or {}).get("include_usage") is True
        total = len(prompt) + count
        usage = {"prompt_tokens": len(prompt), "completion_tokens": count, "total_tokens": total,
                 "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip
        base = {"id": f"cmpl-{seen.request_id}", "created": int(time.time()), "model": self.model}
        base["object"] = "chat.completion.chunk" if chat else "text_completion"
        if not seen.body.get("stream"):
            text = " ".join(WORDS[i % len(WORDS)] for i in range(count))
            seen.finished, seen.usage = True, usage
            choice = {"index": 0, "finish_reason": reason}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return web.json_response({**base, "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(choices: list[dict[str, Any]], chunk_usage: dict[str, Any] | None = None) -> None:
            chunk = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = chunk_usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            if chat:
                role = {"role": "assistant", "content": ""}
                await send([{"index": 0, "delta": role, "logprobs": None, "finish_reason": None}])
            for i in range(count):
                await asyncio.sleep(self.token_delay_s)
                self._running[seen.request_id] += 1
                self._counters["generation_tokens"].labels(self.model, "0").inc()
                text = WORDS[i % len(WORDS)] if i == 0 else f" {WORDS[i % len(WORDS)]}"
                done = reason if i == count - 1 else None
                piece = {"delta": {"content": text}} if chat else {"text": text, "stop_reason": None}
                await send([{"index": 0, **piece, "logprobs": None, "finish_reason": done}])
            if include_usage:
                await send([], usage)
            await response.write(b"data: [DONE]\n\n")
            seen.finished, seen.usage = True, usage
        except ConnectionResetError:  # the client went away: vLLM aborts the request here
            seen.disconnected = True
        return response

    def _prefill(self, request_id: str, prompt: list[str]) -> int:
        """Count the prompt in, and return how many of its tokens full cached blocks already held."""
        self._running[request_id] = len(prompt)
        cached, size = 0, self.block_size
        for end in range(size, len(prompt) + 1, size):
            key = hash(tuple(prompt[:end]))
            if key in self._cached_prefixes and cached == end - size:
                cached = end
            self._cached_prefixes.add(key)
        labels = (self.model, "0")
        self._counters["prompt_tokens"].labels(*labels).inc(len(prompt))
        self._counters["prefix_cache_queries"].labels(*labels).inc(len(prompt))
        self._counters["prefix_cache_hits"].labels(*labels).inc(cached)
        return cached


def prompt_tokens(body: dict[str, Any], chat: bool) -> list[str] | None:
    """The prompt as tokens (words and punctuation; ids as they are), or None when it is malformed."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        tokens: list[str] = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                return None
            tokens += ["<|role|>", str(message.get("role")), *split_words(message["content"])]
        return [*tokens, "<|assistant|>"]
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return split_words(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int and t >= 0 for t in prompt):
        return [str(t) for t in prompt]
    return None


def split_words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def error(status: int, message: str, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)
