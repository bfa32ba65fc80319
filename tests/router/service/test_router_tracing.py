"""One trace from the client through the router's decision to the replica's engine."""

from __future__ import annotations

import openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router.service.local_fleet import fleet_from_gpus
from tests.router.service.fleet_thread import FleetThread

TRACE_ID, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def test_client_router_decision_and_replica_spans_form_one_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: this file is the only one that sets it
    with FleetThread(fleet_from_gpus(["a100-80gb", "h100-80gb"], None, "llama-3.1-8b")) as fleet:
        client = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="none", max_retries=0, timeout=20)
        client.completions.create(
            model="llama-3.1-8b", prompt="trace me", max_tokens=4,
            extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
        )  # fmt: skip
        fleet.wait_until(lambda: len(exporter.get_finished_spans()) >= 3)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    front, route, replica = spans["router.generate"], spans["router.route"], spans["replica.generate"]
    assert {format(s.context.trace_id, "032x") for s in (front, route, replica)} == {TRACE_ID}
    assert front.parent is not None and format(front.parent.span_id, "016x") == CLIENT_SPAN
    assert route.parent is not None and route.parent.span_id == front.context.span_id
    assert replica.parent is not None and replica.parent.span_id == route.context.span_id
    assert route.attributes is not None
    assert route.attributes["fleetroute.policy"] == "sal"
    assert str(route.attributes["fleetroute.replica"]) in str(route.attributes["fleetroute.candidate_scores"])
