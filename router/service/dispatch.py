"""One request through the router: shape, predict, decide, admit, stream, retry, release.

Before the first token a failed replica is retried on the next-best candidate of the same decision
(bounded, with backoff); after it, never — a broken stream ends with an error, not duplicated text.
Whatever happens, the request's ledger entry is released exactly once and the outcome is recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from predictors.base import OutputLengthPredictor
from protos.generation import (
    AgentError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    NoReplicaError,
    OverloadedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from replica_agent.service.tracing import continue_trace, start_request_span
from router.policy.plugin import RouteDecision
from router.policy.profile import Profile
from router.policy.view import ClusterView, ReplicaLoad
from router.request_shaper import RequestShaper, ShapedRequest
from router.service.replica_client import ReplicaCallError, ReplicaClient, one_by_one
from router.service.router_metrics import RouterMetrics
from router.state.cluster import ClusterState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_attempts: int = 3
    retry_backoff_s: float = 0.025
    # A replica is past its threshold when its queue (waiting + unacknowledged) reaches this many
    # requests or its projected KV usage this fraction; when every candidate is, the router sheds.
    max_queue_per_replica: int = 256
    max_kv_usage: float = 0.995
    retry_after_s: int = 1


class Dispatcher:
    def __init__(
        self,
        cluster: ClusterState,
        clients: Mapping[str, ReplicaClient],
        policy: Profile,
        shaper: RequestShaper,
        metrics: RouterMetrics,
        predictor: OutputLengthPredictor | None = None,
        settings: DispatchSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.cluster = cluster
        self.clients = clients
        self.policy = policy
        self.shaper = shaper
        self.metrics = metrics
        self.predictor = predictor
        self.settings = settings or DispatchSettings()
        self._clock = clock
        self._rng = rng or random.Random(0)
        # Looked up once: a proxy that follows whatever tracer provider is set later.
        self._tracer = trace.get_tracer("fleetroute.router")

    # -- deciding -----------------------------------------------------------------------------
    def decide(self, request: GenerateInput) -> tuple[ShapedRequest, RouteDecision, ClusterView]:
        now = self._clock()
        started = time.perf_counter()
        shaped = self.shaper.shape(request, now, predictor=self.predictor)
        view = self.cluster.view(now)
        decision = self.policy.decide(shaped.routing, view, self._rng)
        self.metrics.decision(self.policy.name, time.perf_counter() - started)
        return shaped, decision, view

    def _refusal(
        self, request: GenerateInput, decision: RouteDecision, view: ClusterView
    ) -> AgentError | None:
        if decision.replica_id is None:
            serving = [r for r in view.replicas if not request.model or r.model == request.model]
            if not serving:
                models = sorted({r.model for r in view.replicas})
                return ModelNotFoundError(
                    f"model {request.model!r} is not served (models: {', '.join(models)})"
                )
            return NoReplicaError(f"no healthy replica for model {request.model!r}: {decision.reason}")
        candidates = [view.get(s.replica_id) for s in decision.scores]
        if all(load is not None and self._past_threshold(load) for load in candidates):
            return OverloadedError(
                "every replica is at its queue or KV-cache limit; retry shortly",
                retry_after_s=self.settings.retry_after_s,
            )
        return None

    def _past_threshold(self, load: ReplicaLoad) -> bool:
        return load.queue_depth >= self.settings.max_queue_per_replica or (
            load.total_blocks > 0 and load.projected_kv_usage >= self.settings.max_kv_usage
        )

    # -- dispatching --------------------------------------------------------------------------
    def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        return one_by_one(self.generate_batches(request))

    async def generate_batches(self, request: GenerateInput) -> AsyncGenerator[list[GenerateEvent], None]:
        """:meth:`generate`, the events that came from the replica together in one list, so a front
        door can pass them on with one write."""
        if request.max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be at least 1, got {request.max_tokens}", "max_tokens"
            )
        if self.cluster.ledger.entry(request.request_id) is not None:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in flight")
        shaped, decision, view = self.decide(request)
        if request.predicted_output_tokens is None and shaped.routing.predicted is not None:
            # The agent's memory-aware and predicted-SJF queues get the mean the ledger charged.
            expected = round(shaped.routing.expected_output_tokens)
            request = replace(request, predicted_output_tokens=expected)
        span = start_request_span("router.route", request, "dispatch", self._tracer)
        _describe_decision(span, decision)
        try:
            refusal = self._refusal(request, decision, view)
            if refusal is not None:
                self.metrics.rejected(self.policy.name, refusal.kind)
                span.set_status(Status(StatusCode.ERROR, refusal.message))
                raise refusal
            request = continue_trace(request, span)
            candidates = [rid for rid in decision.ranked if rid in self.clients][: self.settings.max_attempts]
            started = self._clock()
            last_error: ReplicaCallError | None = None
            for attempt, replica_id in enumerate(candidates):
                if attempt:
                    self.metrics.retried(self.policy.name)
                    span.add_event(
                        "retry", {"fleetroute.replica": replica_id, "fleetroute.attempt": attempt + 1}
                    )
                    await asyncio.sleep(self.settings.retry_backoff_s * 2 ** (attempt - 1))
                outcome = _Attempt(self, shaped, replica_id, view.get(replica_id), started)
                stream = outcome.stream(request)
                try:
                    async for batch in stream:
                        yield batch
                    return
                except ReplicaCallError as error:
                    last_error = error
                    if outcome.sent_tokens or not error.retryable:
                        span.set_status(Status(StatusCode.ERROR, error.message))
                        raise _client_error(error) from None
                    log.info(
                        "replica %s refused %s before its first token: %s",
                        replica_id, request.request_id, error,
                    )  # fmt: skip
                finally:
                    await stream.aclose()  # a client that left closes this generator, not the inner one
            span.set_status(Status(StatusCode.ERROR, "no replica could take the request"))
            if last_error is not None:
                raise _client_error(last_error)
            raise NoReplicaError("no replica could take the request")
        finally:
            span.end()


def _describe_decision(span: Span, decision: RouteDecision) -> None:
    if not span.is_recording():  # tracing is off: the attributes would be dropped anyway
        return
    span.set_attribute("fleetroute.policy", decision.policy)
    span.set_attribute("fleetroute.replica", decision.replica_id or "")
    span.set_attribute("fleetroute.reason", decision.reason)
    scores = {score.replica_id: round(score.total, 4) for score in decision.scores}
    span.set_attribute("fleetroute.candidate_scores", json.dumps(scores, separators=(",", ":")))


class _Attempt:
    """One try on one replica: ledger entry in, events out, ledger entry released exactly once."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        shaped: ShapedRequest,
        replica_id: str,
        load: ReplicaLoad | None,
        started: float,
    ) -> None:
        self.d = dispatcher
        self.shaped = shaped
        self.replica_id = replica_id
        self.load = load
        self.started = started
        self.sent_tokens = 0
        self.first_token_at: float | None = None

    async def stream(self, request: GenerateInput) -> AsyncGenerator[list[GenerateEvent], None]:
        d, routing = self.d, self.shaped.routing
        client = d.clients.get(self.replica_id)
        if client is None:  # removed from the fleet since the decision
            raise ReplicaCallError(f"replica {self.replica_id} left the fleet", retryable=True)
        now = d._clock()
        uncached = self._uncached_tokens()
        expected_output = round(routing.expected_output_tokens)
        block_size = self.load.block_size if self.load is not None and self.load.block_size else 16
        d.cluster.record_routed(
            self.replica_id,
            request.request_id,
            prompt_tokens=routing.prompt_tokens,
            uncached_prompt_tokens=uncached,
            predicted_decode_tokens=expected_output,
            blocks=-(-(routing.prompt_tokens + expected_output) // block_size),
            now=now,
            block_hashes=routing.block_hashes,
        )
        status = "error"
        final: GenerateEvent | None = None
        batches = _event_batches(client, request)
        try:
            async for batch in batches:
                for event in batch:
                    if self.first_token_at is None and (event.token_ids or event.text or event.finished):
                        self.first_token_at = d._clock()
                        self._observe_ttft(uncached)
                    self.sent_tokens += len(event.token_ids) or (1 if event.text else 0)
                    if event.finished:
                        # Settled before the yield: front doors stop at the final event and close this stream.
                        final, status = event, event.finish_reason or "stop"
                        d.cluster.record_success(self.replica_id, d._clock())
                yield batch
            if final is None:
                status = "incomplete"
                d.cluster.record_success(self.replica_id, d._clock())
        except ReplicaCallError as error:
            status = "refused" if error.retryable and not self.sent_tokens else "failed"
            if error.kind in ("unavailable", "upstream", "timeout"):
                d.cluster.record_failure(self.replica_id, d._clock())
            raise
        except (GeneratorExit, asyncio.CancelledError):
            if final is None:
                status = "client_gone"
            raise
        finally:
            await batches.aclose()
            d.cluster.release(request.request_id)
            self._record(status, final)

    def _uncached_tokens(self) -> int:
        routing = self.shaped.routing
        if self.load is None or not routing.block_hashes:
            return routing.prompt_tokens
        view_prefix = self.d.cluster.prefix
        matched = view_prefix.match_blocks(self.replica_id, routing.block_hashes)
        return max(0, routing.prompt_tokens - matched * self.load.block_size)

    def _observe_ttft(self, uncached: int) -> None:
        load = self.load
        if load is None or self.first_token_at is None:
            return
        rate = load.speed.prefill_tokens_per_s(load.num_running, 0.0)
        if rate > 0:
            predicted = (load.queued_prefill_tokens + uncached) / rate
            self.d.cluster.observe_ttft(self.replica_id, predicted, self.first_token_at - self.started)

    def _record(self, status: str, final: GenerateEvent | None) -> None:
        d = self.d
        end = d._clock()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        completion = final.usage.completion_tokens if final is not None and final.usage else self.sent_tokens
        d.metrics.finished(d.policy.name, self.replica_id, status, ttft, end - self.started, completion)
        if final is not None and final.usage is not None and d.predictor is not None:
            d.predictor.observe(self.shaped.features, final.usage.completion_tokens)


def _event_batches(
    client: ReplicaClient, request: GenerateInput
) -> AsyncGenerator[list[GenerateEvent], None]:
    """The client's answer in batches: its own where it reads them so (HTTP), else one per event."""
    generate_batches = getattr(client, "generate_batches", None)
    if generate_batches is not None:
        batches: AsyncGenerator[list[GenerateEvent], None] = generate_batches(request)
        return batches
    return _one_by_one(client.generate(request))


async def _one_by_one(events: AsyncIterator[GenerateEvent]) -> AsyncGenerator[list[GenerateEvent], None]:
    try:
        async for event in events:
            yield [event]
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


def _client_error(error: ReplicaCallError | None) -> AgentError:
    if error is None:
        return NoReplicaError("no replica could take the request")
    if error.kind == "invalid_request":
        return InvalidRequestError(error.message)
    if error.kind == "model_not_found":
        return ModelNotFoundError(error.message)
    if error.kind == "timeout":
        return UpstreamTimeoutError(error.message)
    if error.kind == "overloaded":
        return OverloadedError(error.message)
    if error.retryable:
        return NoReplicaError(f"no replica could take the request: {error.message}")
    return UpstreamError(error.message)
