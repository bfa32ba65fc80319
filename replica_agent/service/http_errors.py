"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` for every
failure of the HTTP front door, never a stack trace."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from replica_agent.service.backend import AgentError
from replica_agent.service.openai_responses import JsonObject, error_json

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def agent_error_status(kind: str) -> tuple[int, str, str | None]:
    """HTTP status, OpenAI error type and code for an :class:`AgentError` ``kind``."""
    match kind:
        case "model_not_found":
            return 404, "invalid_request_error", "model_not_found"
        case "unavailable":
            return 503, "server_error", "unavailable"
        case "upstream":
            return 502, "server_error", "upstream_error"
        case "overloaded":
            return 429, "rate_limit_error", "overloaded"
        case "no_replica":
            return 503, "server_error", "no_healthy_replica"
        case "timeout":
            return 504, "server_error", "upstream_timeout"
        case _:
            return 400, "invalid_request_error", None


def agent_error_json(error: AgentError) -> JsonObject:
    _, error_type, code = agent_error_status(error.kind)
    return error_json(error.message, error_type, error.param, code)


def json_response(
    body: JsonObject, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def error_response(error: AgentError, headers: Mapping[str, str] | None = None) -> web.Response:
    status, _, _ = agent_error_status(error.kind)
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return json_response(agent_error_json(error), status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AgentError as error:
        return error_response(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return json_response(_http_error_json(request, error), error.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return json_response(error_json("internal server error", "server_error", code="internal_error"), 500)


def _http_error_json(request: web.Request, error: web.HTTPException) -> JsonObject:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        limit = request.client_max_size
        return error_json(
            f"the request body is larger than the limit of {limit} bytes",
            "invalid_request_error",
            code="request_too_large",
        )
    if isinstance(error, web.HTTPNotFound):
        message, code = f"no such endpoint: {request.method} {request.path}", "not_found"
    elif isinstance(error, web.HTTPMethodNotAllowed):
        message, code = f"{request.method} is not allowed on {request.path}", "method_not_allowed"
    else:
        message, code = error.reason, None
    return error_json(message, "invalid_request_error", code=code)
