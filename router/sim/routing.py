"""The router's side of a simulation: the production cluster state, policy and predictor, fed the
way the dispatcher feeds them (shape, decide, ledger entry, TTFT feedback, release)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from predictors.base import PredictorFeatures
from protos.block_hash import BlockHasher
from protos.routing import RoutingRequest
from replica_agent.engine.request import RequestSpec
from router.policy.plugin import RouteDecision
from router.policy.profile import Profile
from router.policy.view import ReplicaLoad
from router.sim.predict import RequestPredictor
from router.state.cluster import ClusterState


@dataclass(eq=False, slots=True)
class RoutedRequest:
    """A request between its arrival at the router and its completion."""

    spec: RequestSpec
    routing: RoutingRequest
    features: PredictorFeatures
    replica_id: str | None = None
    load: ReplicaLoad | None = None  # the chosen replica as the policy saw it
    uncached_tokens: int = 0
    first_token_s: float | None = None  # virtual time the first token came out
    output_tokens: int | None = None  # set when it finishes


class SimRouter:
    def __init__(
        self,
        cluster: ClusterState,
        policy: Profile,
        predictor: RequestPredictor | None,
        hasher: BlockHasher,
        model: str,
        client_max_tokens: int,
        seed: int,
    ) -> None:
        self.cluster = cluster
        self.policy = policy
        self.predictor = predictor
        self.hasher = hasher
        self.model = model
        self.client_max_tokens = client_max_tokens
        self.rng = random.Random(seed)

    def shape(self, spec: RequestSpec, now: float) -> RoutedRequest:
        """``max_tokens`` is what a client would send: the configured cap, never below the true
        length (so it does not reveal the true length to policies). As in production, the replica
        gets the predicted mean for its length-aware queues."""
        routing = RoutingRequest(
            request_id=spec.request_id,
            model=self.model,
            prompt_tokens=len(spec.prompt_token_ids),
            block_hashes=tuple(self.hasher.hash_tokens(spec.prompt_token_ids)),
            max_tokens=max(self.client_max_tokens, spec.params.max_tokens),
            arrival_time=now,
        )
        if self.predictor is None:
            return RoutedRequest(spec, routing, PredictorFeatures.from_request(routing))
        prompt_text = self.predictor.prompt_text(spec.request_id)
        features = PredictorFeatures.from_request(routing, prompt_text=prompt_text)
        routing = replace(routing, predicted=self.predictor.estimate(spec, features))
        if spec.predicted_output_tokens is None:
            spec = replace(spec, predicted_output_tokens=round(routing.expected_output_tokens))
        return RoutedRequest(spec, routing, features)

    def route(self, request: RoutedRequest, now: float) -> RouteDecision:
        """Decide on the current view; a chosen replica gets the ledger entry production makes."""
        view = self.cluster.view(now)
        decision = self.policy.decide(request.routing, view, self.rng)
        if decision.replica_id is None:
            return decision
        load = view.get(decision.replica_id)
        routing = request.routing
        block_size = load.block_size if load is not None and load.block_size else self.hasher.block_size
        uncached = routing.prompt_tokens
        if load is not None and routing.block_hashes:
            matched = self.cluster.prefix.match_blocks(decision.replica_id, routing.block_hashes)
            uncached = max(0, routing.prompt_tokens - matched * block_size)
        expected_output = round(routing.expected_output_tokens)
        self.cluster.record_routed(
            decision.replica_id,
            routing.request_id,
            prompt_tokens=routing.prompt_tokens,
            uncached_prompt_tokens=uncached,
            predicted_decode_tokens=expected_output,
            blocks=-(-(routing.prompt_tokens + expected_output) // block_size),
            now=now,
            block_hashes=routing.block_hashes,
        )
        request.replica_id, request.load, request.uncached_tokens = decision.replica_id, load, uncached
        return decision

    def first_token(self, request: RoutedRequest, observed_ttft_s: float) -> None:
        """Refine the replica's speed correction from the TTFT the router observed."""
        load = request.load
        if load is None or request.replica_id is None:
            return
        rate = load.speed.prefill_tokens_per_s(load.num_running, 0.0)
        if rate > 0:
            predicted = (load.queued_prefill_tokens + request.uncached_tokens) / rate
            self.cluster.observe_ttft(request.replica_id, predicted, observed_ttft_s)

    def complete(self, request: RoutedRequest, output_tokens: int | None) -> None:
        """Release the ledger entry; learn the output length of a request that finished."""
        self.cluster.release(request.spec.request_id)
        if output_tokens is not None and self.predictor is not None:
            self.predictor.observe(request.features, output_tokens)
