"""Sending one generation back over HTTP in OpenAI's formats: a whole answer, or server-sent events.

Shared by every OpenAI front door (the agent's and the router's): they parse the body, build a
``GenerateInput``, get an event stream, and hand it to :func:`serve_generation`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from protos.generation import AgentError, GenerateEvent, GenerateInput, Usage
from replica_agent.service.backend import close_stream
from replica_agent.service.http_errors import agent_error_json, error_response, json_response
from replica_agent.service.openai_responses import Answer, JsonObject, error_json
from replica_agent.service.openai_schema import ChatBody, CompletionBody, to_generate_input
from replica_agent.service.tracing import continue_trace, start_request_span

log = logging.getLogger(__name__)

EventSource = Callable[[GenerateInput], AsyncIterator[GenerateEvent]]
# Events in lists, those that came together: a stream passes each list on with one write.
BatchSource = Callable[[GenerateInput], AsyncIterator[Sequence[GenerateEvent]]]
DONE_EVENT = b"data: [DONE]\n\n"
# One encoder for every chunk: ``json.dumps`` with separators builds a new one per call.
_to_json = json.JSONEncoder(separators=(",", ":")).encode


async def serve_generation(
    request: web.Request,
    body: CompletionBody | ChatBody,
    *,
    request_id: str,
    model: str,
    max_tokens: int,
    chat: bool,
    span_name: str,
    events_for: EventSource | None = None,
    batches_for: BatchSource | None = None,
    front_door: str = "http",
    tracer: Tracer | None = None,
) -> web.StreamResponse:
    """Run ``batches_for`` (or ``events_for``) on the parsed body and answer whole or streamed;
    refusals become OpenAI-style errors. The event stream is always closed, which aborts an
    unfinished request."""
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
    span = start_request_span(span_name, generate_input, front_door, tracer)
    traced = continue_trace(generate_input, span)
    if batches_for is not None:
        batches = batches_for(traced)
    elif events_for is not None:
        batches = _one_by_one(events_for(traced))
    else:
        span.end()
        raise TypeError("serve_generation needs events_for or batches_for")
    try:
        # The first events (or the refusal) come before any header is sent.
        first = await anext(batches, None)
        if body.stream:
            return await stream_answer(request, answer, first, batches, headers, span)
        return await collect_answer(answer, first, batches, headers)
    except AgentError as error:
        span.set_status(Status(StatusCode.ERROR, error.message))
        return error_response(error, headers)
    finally:
        await close_stream(batches)
        span.end()


async def _one_by_one(events: AsyncIterator[GenerateEvent]) -> AsyncIterator[Sequence[GenerateEvent]]:
    try:
        async for event in events:
            yield (event,)
    finally:
        await close_stream(events)


async def collect_answer(
    answer: Answer,
    first: Sequence[GenerateEvent] | None,
    batches: AsyncIterator[Sequence[GenerateEvent]],
    headers: dict[str, str],
) -> web.Response:
    texts: list[str] = []
    token_ids: list[int] = []
    batch = first
    final: GenerateEvent | None = None
    while batch is not None and final is None:
        for event in batch:
            texts.append(event.text)
            token_ids.extend(event.token_ids)
            if event.finished:
                final = event
                break
        else:
            batch = await anext(batches, None)
    usage = _usage(final, len(token_ids))
    reason = final.finish_reason if final is not None else "abort"
    return json_response(answer.whole("".join(texts), token_ids, reason, usage), headers=headers)


async def stream_answer(
    request: web.Request,
    answer: Answer,
    first: Sequence[GenerateEvent] | None,
    batches: AsyncIterator[Sequence[GenerateEvent]],
    headers: dict[str, str],
    span: Span,
) -> web.StreamResponse:
    response = _EventStreamResponse(
        headers={
            **headers,
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        last = await _send_events(response, answer, first, batches, span)
        # The end of the answer, [DONE] and the end of the body leave together.
        await response.write_eof(last + DONE_EVENT)
    except ConnectionResetError:
        pass  # the client left; the caller closes the event stream, which aborts the request
    return response


async def _send_events(
    response: web.StreamResponse,
    answer: Answer,
    first: Sequence[GenerateEvent] | None,
    batches: AsyncIterator[Sequence[GenerateEvent]],
    span: Span,
) -> bytes:
    """Write each batch of events as it comes, one write per batch; returns the last piece, unsent."""
    encode = ChunkEncoder(answer).encode
    pending = [_sse(answer.role_chunk())] if answer.chat else []
    produced = 0
    try:
        batch = first
        while batch is not None:
            for event in batch:
                produced += len(event.token_ids)
                pending.append(encode(event))
                if event.finished:
                    if answer.include_usage:
                        pending.append(_sse(answer.usage_chunk(_usage(event, produced))))
                    return "".join(pending).encode()
            data, pending = "".join(pending).encode(), []
            await response.write(data)
            batch = await anext(batches, None)
    except AgentError as error:
        # The headers are gone: the error travels in the stream, as OpenAI and vLLM send it.
        span.set_status(Status(StatusCode.ERROR, error.message))
        pending.append(_sse(agent_error_json(error)))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("request %s failed mid-stream", answer.id)
        failure = error_json("internal error while streaming", "server_error", code="internal_error")
        pending.append(_sse(failure))
    return "".join(pending).encode()


class _EventStreamResponse(web.StreamResponse):
    # The headers wait for the first write (always right after prepare): one send, not two.
    _send_headers_immediately = False


def _sse(chunk: JsonObject) -> str:
    return "data: " + _to_json(chunk) + "\n\n"


class ChunkEncoder:
    """``data: `` and the JSON of ``answer.chunk(event)``, the same bytes, from text templates built
    once per answer: a stream chunk differs from the next only in its text, token ids and reason."""

    __slots__ = ("_chat", "_head", "_ids", "_tail")

    def __init__(self, answer: Answer) -> None:
        # The JSON of {"id", "object", "created", "model", "choices": [{"index": 0, ...}]}, written out:
        # encoding a whole envelope costs more than its four values.
        self._head = (
            f'data: {{"id":{_to_json(answer.id)},"object":{_to_json(answer.chunk_object)},'
            f'"created":{_to_json(answer.created)},"model":{_to_json(answer.model)},"choices":[{{"index":0,'
        )
        self._tail = "}]" + (',"usage":null' if answer.include_usage else "") + "}\n\n"
        self._chat, self._ids = answer.chat, answer.return_token_ids

    def encode(self, event: GenerateEvent) -> str:
        text = event.text
        if not self._chat:
            piece = '"text":' + json.dumps(text)
        elif text:
            piece = '"delta":{"content":' + json.dumps(text) + "}"
        else:
            piece = '"delta":{}'
        reason = json.dumps(event.finish_reason) if event.finished else "null"
        ids = ',"token_ids":[' + ",".join(map(str, event.token_ids)) + "]" if self._ids else ""
        return f'{self._head}{piece},"logprobs":null,"finish_reason":{reason}{ids}{self._tail}'


def _usage(final: GenerateEvent | None, produced: int) -> Usage:
    if final is not None and final.usage is not None:
        return final.usage
    return Usage(prompt_tokens=0, completion_tokens=produced)
