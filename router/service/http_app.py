"""The router's OpenAI-compatible front door and its admin API.

``/v1/completions`` and ``/v1/chat/completions`` (whole or SSE), ``/v1/models`` (aggregated over
replicas), ``/health`` (the process is up), ``/ready`` (some replica can take a request),
``/metrics``; and under ``/admin`` the fleet: list, add, drain, undrain, remove replicas.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from protos.generation import InvalidRequestError, ModelNotFoundError
from protos.text import render_chat
from replica_agent.service.http_errors import error_middleware, json_response
from replica_agent.service.openai_responses import error_json
from replica_agent.service.openai_schema import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatBody,
    CompletionBody,
    default_chat_max_tokens,
    parse_body,
)
from replica_agent.service.openai_stream import serve_generation
from replica_agent.service.tracing import agent_tracer
from router.config import ReplicaConfig
from router.service.replica_client import ReplicaCallError

if TYPE_CHECKING:
    from router.service.router import Router

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_router_app(router: Router) -> web.Application:
    routes = _RouterRoutes(router)
    app = web.Application(
        client_max_size=router.config.max_body_bytes, middlewares=[error_middleware, routes.authorize]
    )
    app.router.add_post("/v1/completions", routes.completions)
    app.router.add_post("/v1/chat/completions", routes.chat_completions)
    app.router.add_get("/v1/models", routes.models)
    app.router.add_get("/health", routes.health)
    app.router.add_get("/ready", routes.ready)
    app.router.add_get("/metrics", routes.metrics_page)
    app.router.add_get("/admin/replicas", routes.list_replicas)
    app.router.add_post("/admin/replicas", routes.add_replica)
    app.router.add_post("/admin/replicas/{replica_id}/drain", routes.drain)
    app.router.add_post("/admin/replicas/{replica_id}/undrain", routes.undrain)
    app.router.add_delete("/admin/replicas/{replica_id}", routes.remove)
    return app


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


def _unauthorized(message: str) -> web.Response:
    return json_response(error_json(message, "invalid_request_error", code="invalid_api_key"), 401)


class _RouterRoutes:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.started = int(time.time())
        # Looked up once: a proxy that follows whatever tracer provider is set later.
        self.tracer = agent_tracer()

    @web.middleware
    async def authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        config = self.router.config
        token = _bearer(request)
        admin = request.path.startswith("/admin")
        if admin and config.admin_key and not hmac.compare_digest(token, config.admin_key):
            return _unauthorized("the admin API needs the admin key as a Bearer token")
        needs_key = not admin and request.path.startswith("/v1/") and bool(config.api_keys)
        if needs_key and not any(hmac.compare_digest(token, key) for key in config.api_keys):
            return _unauthorized("missing or unknown API key")
        return await handler(request)

    # -- generation ---------------------------------------------------------------------------
    def _model(self, requested: str | None) -> str:
        models = self.router.models()
        if requested:
            if requested not in models:
                served = ", ".join(sorted(models)) or "none"
                raise ModelNotFoundError(f"model {requested!r} is not served (models: {served})", "model")
            return requested
        if len(models) == 1:
            return next(iter(models))
        raise InvalidRequestError("model is required when the fleet serves several models", "model")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(CompletionBody, await request.read())
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        return await self._generate(request, body, self._model(body.model), max_tokens, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(ChatBody, await request.read())
        model = self._model(body.model)
        max_tokens = body.answer_limit
        if max_tokens is None:
            max_len = self.router.models().get(model) or 8192
            prompt = render_chat([(message.role, message.content) for message in body.messages])
            prompt_tokens = len(self.router.shaper.tokenizer(model).encode(prompt))
            max_tokens = default_chat_max_tokens(max_len, prompt_tokens)
        return await self._generate(request, body, model, max_tokens, chat=True)

    async def _generate(
        self, request: web.Request, body: CompletionBody | ChatBody, model: str, max_tokens: int, chat: bool
    ) -> web.StreamResponse:
        return await serve_generation(
            request,
            body,
            request_id=request.headers.get("X-Request-Id") or uuid.uuid4().hex,
            model=model,
            max_tokens=max_tokens,
            chat=chat,
            batches_for=self.router.dispatcher.generate_batches,
            span_name="router.generate",
            tracer=self.tracer,
        )

    # -- status -------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": self.started, "owned_by": "fleetroute", "root": name,
             "parent": None, "max_model_len": length}
            for name, length in sorted(self.router.models().items())
        ]  # fmt: skip
        return json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        if self.router.ready():
            return json_response({"status": "ready"})
        return json_response({"status": "no healthy replica"}, 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.router.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    # -- admin --------------------------------------------------------------------------------
    async def list_replicas(self, request: web.Request) -> web.Response:
        view = self.router.cluster.view(time.monotonic())
        replicas = []
        for descriptor in self.router.fleet.descriptors():
            load = view.get(descriptor.replica_id)
            replicas.append(
                {
                    "id": descriptor.replica_id, "address": descriptor.address,
                    "transport": descriptor.transport,
                    "model": descriptor.model, "gpu": descriptor.gpu, "tier": descriptor.tier,
                    "healthy": bool(load and load.healthy and not load.circuit_open),
                    "draining": bool(load and load.draining),
                    "kv_usage": round(load.projected_kv_usage, 4) if load and load.total_blocks else None,
                    "queue_depth": load.queue_depth if load else 0,
                    "inflight_requests": load.inflight_requests if load else 0,
                    "staleness_s": round(load.staleness_s, 3) if load else None,
                }
            )  # fmt: skip
        return json_response({"replicas": replicas})

    async def add_replica(self, request: web.Request) -> web.Response:
        try:
            replica = ReplicaConfig.model_validate(json.loads(await request.read() or b"null"))
        except (ValidationError, json.JSONDecodeError) as error:
            raise InvalidRequestError(f"bad replica description: {str(error).splitlines()[0]}") from None
        try:
            await self.router.add_replica(replica)
        except ValueError as error:
            return json_response(error_json(str(error), "invalid_request_error", code="conflict"), 409)
        except ReplicaCallError as error:
            return json_response(error_json(error.message, "server_error", code="unreachable"), 502)
        return json_response({"added": replica.replica_id}, 201)

    async def drain(self, request: web.Request) -> web.Response:
        return self._set_draining(request.match_info["replica_id"], True)

    async def undrain(self, request: web.Request) -> web.Response:
        return self._set_draining(request.match_info["replica_id"], False)

    def _set_draining(self, replica_id: str, draining: bool) -> web.Response:
        try:
            self.router.fleet.drain(replica_id, draining)
        except KeyError:
            return json_response(error_json(f"no replica {replica_id!r}", "invalid_request_error"), 404)
        return json_response({"id": replica_id, "draining": draining})

    async def remove(self, request: web.Request) -> web.Response:
        replica_id = request.match_info["replica_id"]
        if not await self.router.fleet.remove(replica_id):
            return json_response(error_json(f"no replica {replica_id!r}", "invalid_request_error"), 404)
        return json_response({"removed": replica_id})
