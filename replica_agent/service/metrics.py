"""The agent's Prometheus metrics: per-request counters and latency histograms recorded by wrapping
the backend's event stream, plus load gauges read from the latest snapshot at scrape time.

Families are exported under ``fleetroute_agent_*`` (per-request ones labelled by front door) and
under the names vLLM's OpenAI server uses (``vllm:*``, labelled ``model_name`` and ``engine``), so
dashboards and routers built for vLLM work against an agent unchanged. Bucket boundaries follow
vLLM's where vLLM has the metric.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from protos.snapshot import ReplicaSnapshot
from replica_agent.service.backend import AgentError, AgentInfo, GenerateEvent, GenerateInput


def _buckets(bounds: str) -> tuple[float, ...]:
    return tuple(float(bound) for bound in bounds.split())


TTFT_BUCKETS = _buckets(
    "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10 20 40 80 160 640 2560"
)
TOKEN_LATENCY_BUCKETS = _buckets(
    "0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5 5 7.5 10 20 40 80"
)
# Finer at the low end than vLLM's: a fast GPU decodes a token in a few milliseconds.
FINE_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, *TOKEN_LATENCY_BUCKETS)
E2E_BUCKETS = _buckets("0.3 0.5 0.8 1 1.5 2 2.5 5 10 15 20 30 40 50 60 120 240 480 960 1920 7680")
FINISH_REASONS = ("stop", "length", "abort")
VLLM_LABELS = ("model_name", "engine")

# (short key, name after the prefix, help); histograms also carry buckets (None: token-count buckets).
OWN_COUNTERS = (
    ("prompt", "prompt_tokens", "Prompt tokens of finished requests."),
    ("cached", "cached_prompt_tokens", "Prompt tokens of finished requests found in the prefix cache."),
    ("generation", "generation_tokens", "Tokens streamed to clients."),
)
OWN_HISTOGRAMS = (
    ("ttft", "time_to_first_token_seconds", "Arrival to first token.", TTFT_BUCKETS),
    (
        "tpot",
        "time_per_output_token_seconds",
        "Per request: (E2E - TTFT) / (tokens - 1).",
        FINE_TOKEN_LATENCY_BUCKETS,
    ),
    ("e2e", "e2e_request_latency_seconds", "Arrival to last token of finished requests.", E2E_BUCKETS),
)
VLLM_COUNTERS = (
    ("prompt", "prompt_tokens", "Number of prefill tokens processed."),
    ("generation", "generation_tokens", "Number of generation tokens processed."),
    ("cache_queries", "prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."),
    ("cache_hits", "prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."),
)
VLLM_HISTOGRAMS: tuple[tuple[str, str, str, tuple[float, ...] | None], ...] = (
    ("ttft", "time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS),
    (
        "tpot",
        "time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        TOKEN_LATENCY_BUCKETS,
    ),
    (
        "itl",
        "inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        TOKEN_LATENCY_BUCKETS,
    ),
    ("e2e", "e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", E2E_BUCKETS),
    ("prompt_tokens", "request_prompt_tokens", "Number of prefill tokens processed.", None),
    ("generation_tokens", "request_generation_tokens", "Number of generation tokens processed.", None),
    ("max_tokens", "request_params_max_tokens", "Histogram of the max_tokens request parameter.", None),
)


def one_two_five_buckets(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, … up to ``limit`` (vLLM's token-count buckets)."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > limit:
                return tuple(buckets)
            buckets.append(float(mantissa * scale))
        scale *= 10


@dataclass
class _Progress:
    """What one request has produced so far."""

    max_tokens: int
    tokens: int = 0
    first_token_s: float | None = None
    last_token_time: float | None = None
    ended: bool = False


class AgentMetrics:
    def __init__(
        self,
        info: AgentInfo,
        latest_snapshot: Callable[[], ReplicaSnapshot],
        cache_labels: Mapping[str, str] | None = None,
    ) -> None:
        """``cache_labels`` adds to or overrides the labels of ``vllm:cache_config_info``."""
        self.info = info
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(info, latest_snapshot, cache_labels or {}))
        registry = self.registry
        door = ["front_door"]
        self.requests = Counter(
            "fleetroute_agent_requests",
            "Requests by how they ended.",
            [*door, "finish_reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "fleetroute_agent_rejected_requests",
            "Requests refused before admission.",
            [*door, "kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "fleetroute_agent_requests_in_flight", "Requests being streamed now.", door, registry=registry
        )
        self.own_counters = {
            key: Counter(f"fleetroute_agent_{name}", doc, door, registry=registry)
            for key, name, doc in OWN_COUNTERS
        }
        self.own_histograms = {
            key: Histogram(f"fleetroute_agent_{name}", doc, door, buckets=buckets, registry=registry)
            for key, name, doc, buckets in OWN_HISTOGRAMS
        }
        vllm_values = (info.model, "0")
        self.vllm_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*VLLM_LABELS, "finished_reason"],
            registry=registry,
        )
        for reason in FINISH_REASONS:
            self.vllm_success.labels(*vllm_values, reason)
        self._vllm_values = vllm_values
        self.vllm_counters = {
            key: Counter(f"vllm:{name}", doc, VLLM_LABELS, registry=registry).labels(*vllm_values)
            for key, name, doc in VLLM_COUNTERS
        }
        token_buckets = one_two_five_buckets(info.max_model_len)
        self.vllm_histograms = {
            key: Histogram(
                f"vllm:{name}", doc, VLLM_LABELS, buckets=buckets or token_buckets, registry=registry
            ).labels(*vllm_values)
            for key, name, doc, buckets in VLLM_HISTOGRAMS
        }

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def instrument(
        self, request: GenerateInput, events: AsyncIterator[GenerateEvent], front_door: str
    ) -> AsyncGenerator[GenerateEvent, None]:
        """Pass ``events`` through, recording the request exactly once however it ends: finished (by
        its finish reason), refused (``AgentError`` before any token), failed, or aborted because its
        consumer went away. Closing this generator closes ``events``, which aborts the request."""
        progress = _Progress(max_tokens=request.max_tokens)
        in_flight = self.in_flight.labels(front_door)
        in_flight.inc()
        try:
            async for event in events:
                self._observe(progress, event, front_door)
                yield event
        except AgentError as error:
            if not progress.ended and progress.tokens == 0:
                progress.ended = True
                self.rejected.labels(front_door, error.kind).inc()
            self._end(progress, front_door, "error")
            raise
        except Exception:
            self._end(progress, front_door, "error")
            raise
        finally:
            in_flight.dec()
            self._end(progress, front_door, "abort")
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _end(self, progress: _Progress, front_door: str, reason: str) -> None:
        """Count how the request ended; only the first call for a request counts."""
        if progress.ended:
            return
        progress.ended = True
        self.requests.labels(front_door, reason).inc()
        if reason in FINISH_REASONS:
            self.vllm_success.labels(*self._vllm_values, reason).inc()

    def _observe(self, progress: _Progress, event: GenerateEvent, front_door: str) -> None:
        count = len(event.token_ids)
        if count:
            self.own_counters["generation"].labels(front_door).inc(count)
            self.vllm_counters["generation"].inc(count)
            if progress.first_token_s is None:
                progress.first_token_s = event.elapsed_s
                self.own_histograms["ttft"].labels(front_door).observe(event.elapsed_s)
                self.vllm_histograms["ttft"].observe(event.elapsed_s)
            elif progress.last_token_time is not None:
                # Tokens delivered together share the gap since the previous delivery.
                per_token = max(0.0, event.time - progress.last_token_time) / count
                for _ in range(count):
                    self.vllm_histograms["itl"].observe(per_token)
                    self.vllm_histograms["tpot"].observe(per_token)
            progress.tokens += count
            progress.last_token_time = event.time
        if event.finished and not progress.ended:
            self._finish(progress, event, front_door)

    def _finish(self, progress: _Progress, event: GenerateEvent, front_door: str) -> None:
        reason = event.finish_reason or "stop"
        self._end(progress, front_door, reason)
        if reason == "abort":
            return
        if event.usage is not None:
            prompt, cached = event.usage.prompt_tokens, event.usage.cached_tokens
            self.own_counters["prompt"].labels(front_door).inc(prompt)
            self.own_counters["cached"].labels(front_door).inc(cached)
            self.vllm_counters["prompt"].inc(prompt)
            self.vllm_counters["cache_queries"].inc(prompt)
            self.vllm_counters["cache_hits"].inc(cached)
            self.vllm_histograms["prompt_tokens"].observe(prompt)
        self.vllm_histograms["generation_tokens"].observe(progress.tokens)
        self.vllm_histograms["max_tokens"].observe(progress.max_tokens)
        self.own_histograms["e2e"].labels(front_door).observe(event.elapsed_s)
        self.vllm_histograms["e2e"].observe(event.elapsed_s)
        if progress.first_token_s is not None and progress.tokens > 1:
            tpot = max(0.0, event.elapsed_s - progress.first_token_s) / (progress.tokens - 1)
            self.own_histograms["tpot"].labels(front_door).observe(tpot)


class SnapshotCollector(Collector):
    """Load gauges straight from the latest snapshot, so a scrape is never staler than it."""

    def __init__(
        self, info: AgentInfo, latest_snapshot: Callable[[], ReplicaSnapshot], cache_labels: Mapping[str, str]
    ) -> None:
        self.info = info
        self.latest_snapshot = latest_snapshot
        self.vllm_labels = {"model_name": info.model, "engine": "0"}
        self.cache_labels = {
            "block_size": str(info.block_size),
            "num_gpu_blocks": str(info.num_blocks),
            "num_cpu_blocks": "None",
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            **cache_labels,
            **self.vllm_labels,
        }
        self.info_labels = {
            "replica_id": info.replica_id,
            "model": info.model,
            "gpu": info.gpu,
            "tier": info.tier,
            "executor": info.executor,
            "version": info.version,
            "tokenizer": info.tokenizer,
        }

    def collect(self) -> Iterable[Metric]:
        s = self.latest_snapshot()
        yield _gauge("fleetroute_agent_info", "The replica's identity (always 1).", 1.0, self.info_labels)
        own = {
            "kv_blocks_total": ("KV-cache blocks in all.", s.total_blocks),
            "kv_blocks_free": ("KV-cache blocks free.", s.free_blocks),
            "kv_blocks_cached": ("Free blocks still holding a reusable prefix.", s.cached_blocks),
            "kv_cache_fill": ("Fraction of KV blocks held by live requests (0..1).", s.cache_fill),
            "requests_running": ("Requests in the running batch.", s.num_running),
            "requests_waiting": ("Requests queued for admission.", s.num_waiting),
            "waiting_prefill_tokens": ("Prompt tokens queued requests still need.", s.waiting_prefill_tokens),
            "running_context_tokens": ("Context tokens of running requests.", s.running_context_tokens),
            "prefill_tokens_per_second": ("Recent prefill throughput.", s.prefill_tokens_per_s),
            "decode_tokens_per_second": ("Recent decode throughput.", s.decode_tokens_per_s),
            "draining": ("1 while the replica admits no new requests.", s.draining),
            "healthy": ("1 while the replica is healthy.", s.healthy),
            "snapshot_seq": ("Sequence number of the latest snapshot.", s.seq),
        }
        for name, (doc, value) in own.items():
            yield _gauge(f"fleetroute_agent_{name}", doc, float(value))
        yield _counter("fleetroute_agent_preemptions", "Preemptions since start.", s.preemptions_total)

        labels = self.vllm_labels
        usage = "KV-cache usage. 1 means 100 percent usage."
        for name, doc, value in (
            ("num_requests_running", "Number of requests in model execution batches.", s.num_running),
            ("num_requests_waiting", "Number of requests waiting to be processed.", s.num_waiting),
            ("kv_cache_usage_perc", usage, s.cache_fill),
            ("gpu_cache_usage_perc", f"GPU {usage} DEPRECATED: use vllm:kv_cache_usage_perc.", s.cache_fill),
        ):
            yield _gauge(f"vllm:{name}", doc, float(value), labels)
        yield _gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", 1.0, self.cache_labels
        )
        yield _counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            s.preemptions_total,
            labels,
        )


def _gauge(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family
