"""Sending one generation back over HTTP in OpenAI's formats: a whole answer, or server-sent events.

Shared by every OpenAI front door (the agent's and the router's): they parse the body, build a
``GenerateInput``, get an event stream, and hand it to :func:`serve_generation`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from opentelemetry.trace import Span, Status, StatusCode

from protos.generation import AgentError, GenerateEvent, GenerateInput, Usage
from replica_agent.service.backend import close_stream
from replica_agent.service.http_errors import agent_error_json, error_response, json_response
from replica_agent.service.openai_responses import Answer, JsonObject, error_json
from replica_agent.service.openai_schema import ChatBody, CompletionBody, to_generate_input
from replica_agent.service.tracing import continue_trace, start_request_span

log = logging.getLogger(__name__)

EventSource = Callable[[GenerateInput], AsyncIterator[GenerateEvent]]


async def serve_generation(
    request: web.Request,
    body: CompletionBody | ChatBody,
    *,
    request_id: str,
    model: str,
    max_tokens: int,
    chat: bool,
    events_for: EventSource,
    span_name: str,
    front_door: str = "http",
) -> web.StreamResponse:
    """Run ``events_for`` on the parsed body and answer whole or streamed; refusals become
    OpenAI-style errors. The event stream is always closed, which aborts an unfinished request."""
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
    span = start_request_span(span_name, generate_input, front_door)
    events = events_for(continue_trace(generate_input, span))
    try:
        # The first event (or the refusal) comes before any header is sent.
        first = await anext(events, None)
        if body.stream:
            return await stream_answer(request, answer, first, events, headers, span)
        return await collect_answer(answer, first, events, headers)
    except AgentError as error:
        span.set_status(Status(StatusCode.ERROR, error.message))
        return error_response(error, headers)
    finally:
        await close_stream(events)
        span.end()


async def collect_answer(
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


async def stream_answer(
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
