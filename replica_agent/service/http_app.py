"""The agent's OpenAI-compatible HTTP front door: ``/v1/completions``, ``/v1/chat/completions``
(whole or streamed as server-sent events), ``/v1/models``, ``/health`` and ``/metrics``.

Serve it with :func:`start_http_server` (or an ``AppRunner``/``web.run_app`` with
``handler_cancellation=True``): a client that disconnects must cancel its handler, whose ``finally``
closes the backend's event stream, which aborts the request and frees its KV blocks at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from protos.generation import GenerateEvent, GenerateInput
from protos.text import ApproxTokenizer, render_chat
from replica_agent.service.backend import Backend
from replica_agent.service.http_errors import (
    error_middleware,
    json_response,
)
from replica_agent.service.metrics import AgentMetrics
from replica_agent.service.openai_responses import models_json
from replica_agent.service.openai_schema import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatBody,
    CompletionBody,
    default_chat_max_tokens,
    parse_body,
)
from replica_agent.service.openai_stream import serve_generation

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
FRONT_DOOR = "http"


def build_http_app(
    backend: Backend, metrics: AgentMetrics, max_body_bytes: int = MAX_BODY_BYTES
) -> web.Application:
    """The OpenAI-compatible app; a body over ``max_body_bytes`` gets a 413."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    routes = _Routes(backend, metrics)
    app.router.add_post("/v1/completions", routes.completions)
    app.router.add_post("/v1/chat/completions", routes.chat_completions)
    app.router.add_get("/v1/models", routes.models)
    app.router.add_get("/health", routes.health)
    app.router.add_get("/metrics", routes.metrics_page)
    return app


async def start_http_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port); returns the runner and the bound port.

    The runner sets ``handler_cancellation=True`` so that a client going away cancels its handler
    (and so aborts its request) even while the handler waits for the engine. aiohttp sets
    TCP_NODELAY on every accepted connection, so each SSE chunk leaves as soon as it is written.
    """
    # No access log: a line per request costs more than routing it; request metrics cover it.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    address = runner.addresses[0]
    return runner, int(address[1])


class _Routes:
    def __init__(self, backend: Backend, metrics: AgentMetrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self.started = int(time.time())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(CompletionBody, await request.read())
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        return await self._generate(request, body, max_tokens, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(ChatBody, await request.read())
        max_tokens = body.answer_limit
        if max_tokens is None:
            prompt = render_chat([(message.role, message.content) for message in body.messages])
            max_tokens = default_chat_max_tokens(self.backend.info.max_model_len, self._count_tokens(prompt))
        return await self._generate(request, body, max_tokens, chat=True)

    def _count_tokens(self, text: str) -> int:
        """Exact when the backend tokenizes itself (the built-in engine), else an estimate."""
        encode = getattr(getattr(self.backend, "tokenizer", None), "encode", None)
        if callable(encode):
            return len(encode(text))
        return ApproxTokenizer().count(text)

    async def _generate(
        self, request: web.Request, body: CompletionBody | ChatBody, max_tokens: int, chat: bool
    ) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        model = body.model or self.backend.info.model

        def events_for(generate_input: GenerateInput) -> AsyncIterator[GenerateEvent]:
            return self.metrics.instrument(generate_input, self.backend.generate(generate_input), FRONT_DOOR)

        return await serve_generation(
            request,
            body,
            request_id=request_id,
            model=model,
            max_tokens=max_tokens,
            chat=chat,
            events_for=events_for,
            span_name="replica.generate",
            front_door=FRONT_DOOR,
        )

    async def models(self, request: web.Request) -> web.Response:
        return json_response(models_json(self.backend.info, self.started))

    async def health(self, request: web.Request) -> web.Response:
        snapshot = self.backend.latest_snapshot()
        if self.backend.draining or snapshot.draining:
            return json_response({"status": "draining"}, status=503)
        if not snapshot.healthy:
            return json_response({"status": "unhealthy"}, status=503)
        return json_response({"status": "ok"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})
