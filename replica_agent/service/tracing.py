"""One OpenTelemetry span per request, child of the caller's W3C trace context when it sent one.

Without a configured tracer provider the spans cost next to nothing (the API's no-op tracer).
"""

from __future__ import annotations

import dataclasses

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind, Tracer

from replica_agent.service.backend import GenerateInput


def agent_tracer() -> Tracer:
    return trace.get_tracer("fleetroute.replica_agent")


def start_request_span(
    name: str, request: GenerateInput, front_door: str, tracer: Tracer | None = None
) -> Span:
    carrier = {}
    if request.traceparent:
        carrier["traceparent"] = request.traceparent
        if request.tracestate:
            carrier["tracestate"] = request.tracestate
    return (tracer or agent_tracer()).start_span(
        name,
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={
            "fleetroute.request_id": request.request_id,
            "fleetroute.front_door": front_door,
            "gen_ai.request.model": request.model,
            "gen_ai.request.max_tokens": request.max_tokens,
        },
    )


def continue_trace(request: GenerateInput, span: Span) -> GenerateInput:
    """``request`` carrying ``span`` as the parent for whatever serves it next (the router's span
    becomes the replica's parent); unchanged when tracing is off and the span records nothing."""
    if not span.get_span_context().is_valid:
        return request
    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(span))
    if "traceparent" not in carrier:
        return request
    return dataclasses.replace(
        request, traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate")
    )
