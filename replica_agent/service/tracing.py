"""One OpenTelemetry span per request, child of the caller's W3C trace context when it sent one.

Without a configured tracer provider the spans cost next to nothing (the API's no-op tracer).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.propagate import extract
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
