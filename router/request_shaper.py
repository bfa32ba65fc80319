"""From an OpenAI request to what a policy needs: token count, block hashes, predicted length.

Pure: tokenization and hashing use the same shared functions as the replicas (``protos.text``,
``protos.block_hash``), so for replicas on the built-in engine the router's block hashes are exactly
the ones the replica caches, and prefix routing sees the real sharing.
"""

from __future__ import annotations

from dataclasses import dataclass

from predictors.base import OutputLengthPredictor, PredictorFeatures
from protos.block_hash import DEFAULT_BLOCK_SIZE, DEFAULT_HASH_SEED, BlockHasher
from protos.generation import GenerateInput
from protos.routing import RoutingRequest
from protos.text import ApproxTokenizer, Tokenizer, render_chat
from replica_agent.executors.gpu_profiles import get_model_profile, model_profile_names

APPROX_VOCAB_SIZE = 32000
MAX_MEMO_PIECES = 1 << 16


def default_tokenizer(model: str) -> Tokenizer:
    """The approximate tokenizer with the vocabulary the built-in engine uses for ``model``."""
    vocab = get_model_profile(model).vocab_size if model in model_profile_names() else APPROX_VOCAB_SIZE
    return ApproxTokenizer(vocab_size=vocab)


class _PieceMemo:
    """:class:`ApproxTokenizer` ids with each distinct piece hashed once: a piece's id depends on
    the piece alone (and a piece tokenizes to itself), so a table gives the same ids. Bounded: it
    starts over when full."""

    __slots__ = ("_ids", "_tokenizer")

    def __init__(self, tokenizer: ApproxTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        ids, tokens = self._ids, []
        for piece in self._tokenizer.pieces(text):
            token = ids.get(piece)
            if token is None:
                if len(ids) >= MAX_MEMO_PIECES:
                    ids.clear()
                token = ids[piece] = self._tokenizer.encode(piece)[0]
            tokens.append(token)
        return tokens


def _last_user_message(request: GenerateInput) -> str | None:
    """What a chat's answer answers: its last user message (what length predictors read)."""
    for role, content in reversed(request.messages):
        if role == "user":
            return content
    return None


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
        self._memos: dict[str, _PieceMemo] = {}
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
        memo = self._memos.get(request.model)
        if memo is not None:
            return tuple(memo.encode(text))
        tokenizer = self.tokenizer(request.model)
        if type(tokenizer) is ApproxTokenizer:
            self._memos[request.model] = _PieceMemo(tokenizer)
        return tuple(tokenizer.encode(text))

    def shape(
        self,
        request: GenerateInput,
        now: float,
        tenant: str | None = None,
        predictor: OutputLengthPredictor | None = None,
    ) -> ShapedRequest:
        """The request as policies see it, with ``predictor``'s estimate of its length when given."""
        tokens = self.prompt_tokens(request)
        hashes = tuple(self._hasher.hash_tokens(tokens))
        features = PredictorFeatures(
            request.model,
            len(tokens),
            request.max_tokens,
            tenant=request.user if tenant is None else tenant,
            user=request.user,
            prompt_text=request.prompt if request.prompt is not None else _last_user_message(request),
        )
        routing = RoutingRequest(
            request_id=request.request_id,
            model=request.model,
            prompt_tokens=len(tokens),
            block_hashes=hashes,
            max_tokens=request.max_tokens,
            predicted=None if predictor is None else predictor.predict(features),
            arrival_time=now,
            priority=request.priority,
        )
        return ShapedRequest(routing, features, tokens)
