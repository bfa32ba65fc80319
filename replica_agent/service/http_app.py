"""The agent's OpenAI-compatible HTTP front door: ``/v1/completions``, ``/v1/chat/completions``
(whole or streamed as server-sent events), ``/v1/models``, ``/health`` and ``/metrics``.

Serve it with :func:`start_http_server` (or an ``AppRunner``/``web.run_app`` with
``handler_cancellation=True``): a client that disconnects must cancel its handler, whose ``finally``
closes the backend's event stream, which aborts the request and frees its KV blocks at once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.trace import Span, Status, StatusCode

from protos.text import ApproxTokenizer, render_chat
from replica_agent.service.backend import AgentError, Backend, GenerateEvent, Usage, close_stream
from replica_agent.service.http_errors import (
    agent_error_json,
    error_middleware,
    error_response,
    json_response,
)
from replica_agent.service.metrics import AgentMetrics
from replica_agent.service.openai_responses import Answer, JsonObject, error_json, models_json
from replica_agent.service.openai_schema import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatBody,
    CompletionBody,
    default_chat_max_tokens,
    parse_body,
    to_generate_input,
)
from replica_agent.service.tracing import start_request_span

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
    runner = web.AppRunner(app, handler_cancellation=True)
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
        generate_input = to_generate_input(
            body,
            request_id=request_id,
            model=model,
            max_tokens=max_tokens,
            traceparent=request.headers.get("traceparent"),
            tracestate=request.headers.get("tracestate"),
        )
        answer = Answer(
            id=f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
            created=int(time.time()),
            model=model,
            chat=chat,
            include_usage=body.include_usage,
            return_token_ids=bool(body.return_token_ids),
        )
        headers = {"X-Request-Id": request_id}
        span = start_request_span("replica.generate", generate_input, FRONT_DOOR)
        events = self.metrics.instrument(generate_input, self.backend.generate(generate_input), FRONT_DOOR)
        try:
            # The first event (or the backend's refusal) comes before any header is sent.
            first = await anext(events, None)
            if body.stream:
                return await _stream(request, answer, first, events, headers, span)
            return await _collect(answer, first, events, headers)
        except AgentError as error:
            span.set_status(Status(StatusCode.ERROR, error.message))
            return error_response(error, headers)
        finally:
            await close_stream(events)
            span.end()

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


async def _collect(
    answer: Answer, first: GenerateEvent | None, events: AsyncIterator[GenerateEvent], headers: dict[str, str]
) -> web.Response:
    texts: list[str] = []
    token_ids: list[int] = []
    event = first
    final: GenerateEvent | None = None
    while event is not None:
        texts.append(event.text)
        token_ids.extend(event.token_ids)
        if event.finished:
            final = event
            break
        event = await anext(events, None)
    usage = _usage(final, len(token_ids))
    reason = final.finish_reason if final is not None else "abort"
    return json_response(answer.whole("".join(texts), token_ids, reason, usage), headers=headers)


async def _stream(
    request: web.Request,
    answer: Answer,
    first: GenerateEvent | None,
    events: AsyncIterator[GenerateEvent],
    headers: dict[str, str],
    span: Span,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            **headers,
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        await _send_events(response, answer, first, events, span)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left; the caller closes the event stream, which aborts the request
    return response


async def _send_events(
    response: web.StreamResponse,
    answer: Answer,
    first: GenerateEvent | None,
    events: AsyncIterator[GenerateEvent],
    span: Span,
) -> None:
    try:
        if answer.chat:
            await _send(response, answer.role_chunk())
        produced = 0
        event = first
        while event is not None:
            produced += len(event.token_ids)
            await _send(response, answer.chunk(event))
            if event.finished:
                if answer.include_usage:
                    await _send(response, answer.usage_chunk(_usage(event, produced)))
                return
            event = await anext(events, None)
    except AgentError as error:
        # The headers are gone: the error travels in the stream, as OpenAI and vLLM send it.
        span.set_status(Status(StatusCode.ERROR, error.message))
        await _send(response, agent_error_json(error))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("request %s failed mid-stream", answer.id)
        await _send(
            response, error_json("internal error while streaming", "server_error", code="internal_error")
        )


async def _send(response: web.StreamResponse, chunk: JsonObject) -> None:
    # One write per chunk: aiohttp hands it to the transport at once (no buffering to flush).
    await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")


def _usage(final: GenerateEvent | None, produced: int) -> Usage:
    if final is not None and final.usage is not None:
        return final.usage
    return Usage(prompt_tokens=0, completion_tokens=produced)
