"""From an OpenAI request to what a policy needs: token count, block hashes, predicted length.

Pure: tokenization and hashing use the same shared functions as the replicas (``protos.text``,
``protos.block_hash``), so for replicas on the built-in engine the router's block hashes are exactly
the ones the replica caches, and prefix routing sees the real sharing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from predictors.base import OutputLengthPredictor, PredictorFeatures
from protos.block_hash import DEFAULT_BLOCK_SIZE, DEFAULT_HASH_SEED, BlockHasher
from protos.generation import GenerateInput
from protos.routing import RoutingRequest
from protos.text import ApproxTokenizer, Tokenizer, render_chat
from replica_agent.executors.gpu_profiles import get_model_profile, model_profile_names

APPROX_VOCAB_SIZE = 32000


def default_tokenizer(model: str) -> Tokenizer:
    """The approximate tokenizer with the vocabulary the built-in engine uses for ``model``."""
    vocab = get_model_profile(model).vocab_size if model in model_profile_names() else APPROX_VOCAB_SIZE
    return ApproxTokenizer(vocab_size=vocab)


@dataclass(frozen=True, slots=True)
class ShapedRequest:
    routing: RoutingRequest
    features: PredictorFeatures
    prompt_token_ids: tuple[int, ...]


class RequestShaper:
    def __init__(
        self,
        tokenizers: dict[str, Tokenizer] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        hash_seed: int = DEFAULT_HASH_SEED,
    ) -> None:
        self._tokenizers = dict(tokenizers or {})
        self._hasher = BlockHasher(block_size, hash_seed)

    def tokenizer(self, model: str) -> Tokenizer:
        tokenizer = self._tokenizers.get(model)
        if tokenizer is None:
            tokenizer = self._tokenizers[model] = default_tokenizer(model)
        return tokenizer

    def prompt_tokens(self, request: GenerateInput) -> tuple[int, ...]:
        if request.prompt_token_ids:
            return request.prompt_token_ids
        text = render_chat(request.messages) if request.messages else (request.prompt or "")
        return tuple(self.tokenizer(request.model).encode(text))

    def shape(self, request: GenerateInput, now: float, tenant: str | None = None) -> ShapedRequest:
        tokens = self.prompt_tokens(request)
        hashes = self._hasher.hash_tokens(tokens)
        routing = RoutingRequest(
            request_id=request.request_id,
            model=request.model,
            prompt_tokens=len(tokens),
            block_hashes=tuple(hashes),
            max_tokens=request.max_tokens,
            arrival_time=now,
            priority=request.priority,
        )
        features = PredictorFeatures.from_request(routing, tenant=tenant, prompt_text=request.prompt)
        return ShapedRequest(routing, features, tokens)

    @staticmethod
    def with_prediction(shaped: ShapedRequest, predictor: OutputLengthPredictor | None) -> ShapedRequest:
        if predictor is None:
            return shaped
        estimate = predictor.predict(shaped.features)
        return replace(shaped, routing=replace(shaped.routing, predicted=estimate))
