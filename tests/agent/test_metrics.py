"""AgentMetrics on its own: scrape-time gauges from a snapshot, and each request recorded once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos.snapshot import ReplicaSnapshot, Tier
from replica_agent.service.backend import (
    AgentInfo,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    UpstreamError,
    Usage,
)
from replica_agent.service.metrics import AgentMetrics, one_two_five_buckets

INFO = AgentInfo(
    replica_id="r1",
    model="m",
    gpu="a100-80gb",
    tier="cloud",
    executor="sim",
    block_size=16,
    num_blocks=1000,
    max_model_len=4096,
    hash_seed=0,
    version="0.1.0",
    tokenizer="approx",
)
REQUEST = GenerateInput(request_id="q", model="m", max_tokens=8, prompt="hi")


def snapshot(**fields: Any) -> ReplicaSnapshot:
    values: dict[str, Any] = {
        "replica_id": "r1",
        "model": "m",
        "gpu": "a100-80gb",
        "tier": Tier.CLOUD,
        "seq": 7,
        "time": 0.0,
        "total_blocks": 1000,
        "free_blocks": 750,
        "cached_blocks": 40,
        "block_size": 16,
        "num_running": 3,
        "num_waiting": 2,
        "waiting_prefill_tokens": 900,
        "running_context_tokens": 3000,
        "preemptions_total": 5,
        "prefill_tokens_per_s": 1234.5,
        "decode_tokens_per_s": 321.0,
    }
    values.update(fields)
    return ReplicaSnapshot(**values)


class Holder:
    def __init__(self) -> None:
        self.current = snapshot()


def scrape(metrics: AgentMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in scraped.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def event(tokens: int, at: float, finished: bool = False, reason: str | None = None) -> GenerateEvent:
    return GenerateEvent(
        request_id="q",
        token_ids=tuple(range(tokens)),
        text="x" * tokens,
        time=100.0 + at,
        elapsed_s=at,
        finished=finished,
        finish_reason=reason,
        usage=Usage(20, 5, 16) if finished else None,
    )


class Source:
    """An event stream that remembers whether it was closed early."""

    def __init__(self, events: list[GenerateEvent], error: Exception | None = None) -> None:
        self.events, self.error, self.closed = events, error, False

    async def generate(self) -> AsyncIterator[GenerateEvent]:
        try:
            for item in self.events:
                yield item
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 5.0))


def test_gauges_come_from_the_latest_snapshot_at_scrape_time() -> None:
    holder = Holder()
    metrics = AgentMetrics(INFO, lambda: holder.current)
    scraped = scrape(metrics)
    vllm = {"model_name": "m"}
    assert value(scraped, "vllm:num_requests_running", **vllm) == 3
    assert value(scraped, "vllm:num_requests_waiting", **vllm) == 2
    assert value(scraped, "vllm:kv_cache_usage_perc", **vllm) == pytest.approx(0.25)
    assert value(scraped, "vllm:gpu_cache_usage_perc", **vllm) == pytest.approx(0.25)
    assert value(scraped, "vllm:num_preemptions_total", **vllm) == 5
    assert value(scraped, "vllm:cache_config_info", block_size="16", num_gpu_blocks="1000", **vllm) == 1
    assert value(scraped, "fleetroute_agent_kv_blocks_free") == 750
    assert value(scraped, "fleetroute_agent_kv_blocks_cached") == 40
    assert value(scraped, "fleetroute_agent_waiting_prefill_tokens") == 900
    assert value(scraped, "fleetroute_agent_running_context_tokens") == 3000
    assert value(scraped, "fleetroute_agent_decode_tokens_per_second") == 321.0
    assert value(scraped, "fleetroute_agent_draining") == 0
    assert value(scraped, "fleetroute_agent_info", replica_id="r1", gpu="a100-80gb") == 1

    holder.current = snapshot(free_blocks=1000, num_running=0, draining=True)
    scraped = scrape(metrics)
    assert value(scraped, "vllm:kv_cache_usage_perc", **vllm) == 0
    assert value(scraped, "vllm:num_requests_running", **vllm) == 0
    assert value(scraped, "fleetroute_agent_draining") == 1


def test_each_agent_has_its_own_registry_and_openmetrics_on_request() -> None:
    first, second = AgentMetrics(INFO, snapshot), AgentMetrics(INFO, snapshot)
    assert first.registry is not second.registry
    _, plain = first.render()
    body, open_metrics = first.render("application/openmetrics-text; version=1.0.0")
    assert plain.startswith("text/plain") and open_metrics.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_a_finished_request_is_recorded_once_with_its_latencies() -> None:
    metrics = AgentMetrics(INFO, snapshot)
    source = Source([event(1, 0.2), event(2, 0.3), event(2, 0.5, True, "length")])

    async def body() -> list[GenerateEvent]:
        return [e async for e in metrics.instrument(REQUEST, source.generate(), "grpc")]

    assert len(run(body())) == 3
    scraped = scrape(metrics)
    door = {"front_door": "grpc"}
    assert value(scraped, "fleetroute_agent_requests_total", finish_reason="length", **door) == 1
    assert value(scraped, "vllm:request_success_total", finished_reason="length") == 1
    assert value(scraped, "vllm:request_success_total", finished_reason="abort") == 0
    assert value(scraped, "fleetroute_agent_generation_tokens_total", **door) == 5
    assert value(scraped, "vllm:generation_tokens_total") == 5
    assert value(scraped, "vllm:prompt_tokens_total") == 20
    assert value(scraped, "vllm:prefix_cache_hits_total") == 16
    assert value(scraped, "fleetroute_agent_cached_prompt_tokens_total", **door) == 16
    assert value(scraped, "vllm:time_to_first_token_seconds_sum") == pytest.approx(0.2)
    assert value(scraped, "vllm:inter_token_latency_seconds_count") == 4
    assert value(scraped, "vllm:inter_token_latency_seconds_sum") == pytest.approx(0.3)
    assert value(scraped, "vllm:time_per_output_token_seconds_count") == 4
    assert value(scraped, "vllm:e2e_request_latency_seconds_sum") == pytest.approx(0.5)
    assert value(scraped, "fleetroute_agent_time_per_output_token_seconds_sum", **door) == pytest.approx(
        0.3 / 4
    )
    assert value(scraped, "vllm:request_generation_tokens_count") == 1
    assert value(scraped, "vllm:request_params_max_tokens_sum") == REQUEST.max_tokens
    assert value(scraped, "fleetroute_agent_requests_in_flight", **door) == 0


def test_a_consumer_that_leaves_counts_one_abort_and_closes_the_source() -> None:
    metrics = AgentMetrics(INFO, snapshot)
    source = Source([event(1, 0.1), event(1, 0.2), event(1, 0.3, True, "stop")])

    async def body() -> None:
        stream = metrics.instrument(REQUEST, source.generate(), "http")
        await anext(stream)
        assert value(scrape(metrics), "fleetroute_agent_requests_in_flight", front_door="http") == 1
        await stream.aclose()
        await stream.aclose()

    run(body())
    scraped = scrape(metrics)
    assert source.closed
    assert value(scraped, "fleetroute_agent_requests_total", front_door="http", finish_reason="abort") == 1
    assert value(scraped, "vllm:request_success_total", finished_reason="abort") == 1
    assert value(scraped, "vllm:e2e_request_latency_seconds_count") == 0
    assert value(scraped, "fleetroute_agent_requests_in_flight", front_door="http") == 0


def test_an_engine_side_abort_then_close_is_still_one_abort() -> None:
    metrics = AgentMetrics(INFO, snapshot)
    source = Source([event(1, 0.1), event(0, 0.2, True, "abort")])

    async def body() -> None:
        stream = metrics.instrument(REQUEST, source.generate(), "http")
        async for item in stream:
            if item.finished:
                break
        await stream.aclose()

    run(body())
    scraped = scrape(metrics)
    assert value(scraped, "fleetroute_agent_requests_total", front_door="http", finish_reason="abort") == 1
    assert value(scraped, "vllm:request_success_total", finished_reason="abort") == 1


def test_refused_and_failed_requests() -> None:
    metrics = AgentMetrics(INFO, snapshot)

    async def consume(source: Source) -> None:
        async for _ in metrics.instrument(REQUEST, source.generate(), "http"):
            pass

    with pytest.raises(InvalidRequestError):
        run(consume(Source([], InvalidRequestError("bad"))))
    with pytest.raises(UpstreamError):
        run(consume(Source([event(1, 0.1)], UpstreamError("gone"))))
    with pytest.raises(RuntimeError):
        run(consume(Source([], RuntimeError("boom"))))
    scraped = scrape(metrics)
    door = {"front_door": "http"}
    assert value(scraped, "fleetroute_agent_rejected_requests_total", kind="invalid_request", **door) == 1
    assert value(scraped, "fleetroute_agent_requests_total", finish_reason="error", **door) == 2
    assert not [
        n
        for (n, ls), v in scraped.items()
        if n == "fleetroute_agent_requests_total" and v and ("finish_reason", "abort") in ls
    ]
    assert value(scraped, "fleetroute_agent_requests_in_flight", **door) == 0


def test_token_buckets_follow_vllms_one_two_five_series() -> None:
    assert one_two_five_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    assert one_two_five_buckets(4096)[-1] == 2000
