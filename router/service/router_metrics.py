"""The router's Prometheus metrics (``fleetroute_*``), in a registry of its own.

Per-request series are labelled by policy (and replica where it matters); per-replica load is read
from the cluster view at scrape time, so ``/metrics`` is always current.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from predictors.drift import DriftState, PredictionSource
from router.policy.view import ClusterView

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2)


class _ReplicaLoadCollector(Collector):
    def __init__(self, view: Callable[[], ClusterView]) -> None:
        self._view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._view()
        families = {
            "kv_usage": ("fleetroute_replica_kv_usage", "Projected KV-cache usage (0-1)"),
            "queue": ("fleetroute_replica_queue_depth", "Waiting requests incl. routed, unacknowledged"),
            "inflight": (
                "fleetroute_replica_inflight_requests",
                "Requests the router has open on the replica",
            ),
            "tokens": ("fleetroute_replica_inflight_tokens", "Routed tokens not yet seen in a snapshot"),
            "healthy": ("fleetroute_replica_healthy", "1 when the replica takes requests"),
            "stale": ("fleetroute_replica_staleness_seconds", "Age of the replica's last snapshot"),
        }
        gauges = {
            key: GaugeMetricFamily(name, doc, labels=["replica", "gpu"])
            for key, (name, doc) in families.items()
        }
        for load in view.replicas:
            labels = [load.replica_id, load.gpu]
            gauges["kv_usage"].add_metric(labels, load.projected_kv_usage if load.total_blocks else 0.0)
            gauges["queue"].add_metric(labels, load.queue_depth)
            gauges["inflight"].add_metric(labels, load.inflight_requests)
            gauges["tokens"].add_metric(labels, load.pending_prefill_tokens + load.pending_decode_tokens)
            usable = load.healthy and not load.draining and not load.circuit_open
            gauges["healthy"].add_metric(labels, 1.0 if usable else 0.0)
            gauges["stale"].add_metric(labels, load.staleness_s)
        yield from gauges.values()


class _PredictorCollector(Collector):
    """The output-length predictor: which source routing uses and how each one does lately. Without
    a learned model (``state`` None) only the source, the running average, is exported."""

    def __init__(self, state: Callable[[], DriftState] | None) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = None if self._state is None else self._state()
        in_use = PredictionSource.BASELINE if state is None else state.source
        source = GaugeMetricFamily(
            "fleetroute_predictor_source", "1 for the output-length source routing uses", labels=["source"]
        )
        for candidate in PredictionSource if state is not None else (PredictionSource.BASELINE,):
            source.add_metric([candidate.value], 1.0 if candidate is in_use else 0.0)
        yield source
        if state is None:
            return
        yield CounterMetricFamily(
            "fleetroute_predictor_switches", "Switches between the model and the running average",
            value=state.switches,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "fleetroute_predictor_window_requests",
            "Finished requests in the drift window",
            value=state.samples,
        )
        if state.kendall_tau is None or state.model_error is None or state.baseline_error is None:
            return  # not judged yet
        yield GaugeMetricFamily(
            "fleetroute_predictor_kendall_tau",
            "Rolling Kendall rank correlation of the model's predictions with actual lengths",
            value=state.kendall_tau,
        )
        error = GaugeMetricFamily(
            "fleetroute_predictor_log_error",
            "Rolling mean absolute log error of each source's predicted median length",
            labels=["source"],
        )
        error.add_metric([PredictionSource.MODEL.value], state.model_error)
        error.add_metric([PredictionSource.BASELINE.value], state.baseline_error)
        yield error


@dataclass(frozen=True, slots=True)
class _PolicySeries:
    ttft: Histogram
    tpot: Histogram
    e2e: Histogram
    decision: Histogram


class RouterMetrics:
    def __init__(
        self,
        view: Callable[[], ClusterView] | None = None,
        predictor: Callable[[], DriftState] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fleetroute_requests", "Requests by outcome", ["policy", "replica", "status"], registry=r
        )
        self.ttft = Histogram(
            "fleetroute_ttft_seconds", "Time to first token", ["policy"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "fleetroute_tpot_seconds",
            "Time per output token after the first",
            ["policy"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "fleetroute_e2e_seconds",
            "End-to-end request latency",
            ["policy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_seconds = Histogram(
            "fleetroute_decision_seconds",
            "Routing decision latency",
            ["policy"],
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.retries = Counter("fleetroute_retries", "Retries before the first token", ["policy"], registry=r)
        self.rejections = Counter(
            "fleetroute_rejections", "Requests refused by the router", ["policy", "reason"], registry=r
        )
        if view is not None:
            r.register(_ReplicaLoadCollector(view))
        r.register(_PredictorCollector(predictor))
        # Labelled children, looked up once: ``labels()`` takes a lock and builds a key every call.
        self._series: dict[str, _PolicySeries] = {}
        self._outcomes: dict[tuple[str, str, str], Counter] = {}

    def _policy(self, policy: str) -> _PolicySeries:
        series = self._series.get(policy)
        if series is None:
            series = self._series[policy] = _PolicySeries(
                self.ttft.labels(policy), self.tpot.labels(policy), self.e2e.labels(policy),
                self.decision_seconds.labels(policy),
            )  # fmt: skip
        return series

    def decision(self, policy: str, seconds: float) -> None:
        self._policy(policy).decision.observe(seconds)

    def retried(self, policy: str) -> None:
        self.retries.labels(policy).inc()

    def rejected(self, policy: str, reason: str) -> None:
        self.rejections.labels(policy, reason).inc()

    def finished(
        self,
        policy: str,
        replica: str,
        status: str,
        ttft_s: float | None,
        e2e_s: float,
        completion_tokens: int,
    ) -> None:
        key = (policy, replica, status)
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = self._outcomes[key] = self.requests.labels(policy, replica, status)
        outcome.inc()
        if ttft_s is None:
            return
        series = self._policy(policy)
        series.ttft.observe(ttft_s)
        series.e2e.observe(e2e_s)
        if completion_tokens > 1:
            series.tpot.observe((e2e_s - ttft_s) / (completion_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def monotonic_view(view: Callable[[float], ClusterView]) -> Callable[[], ClusterView]:
    return lambda: view(time.monotonic())
