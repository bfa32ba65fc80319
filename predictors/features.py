"""One dense float32 vector per request, shared by the scikit-learn and torch length models.

The vector holds, in this order: hand-made text features (lengths, question/code/list markers,
requested counts, cue words), the requested ``max_tokens``, a one-hot of the answering model (the
models seen in training, plus "unknown"), a hashed one-hot of the tenant, and a dense summary of the
prompt's words and characters: word uni/bigrams and character n-grams are hashed into one sparse
space, weighted by ``log1p(count) · idf``, and projected onto a truncated SVD fitted on the training
prompts. The whole vector is standardised with training means and deviations.

Hashing and projection are done here with numpy (a seeded xxhash per word, a vectorised rolling hash
for character n-grams) rather than with scikit-learn's vectorizers, whose per-call overhead on one
request is several times the latency budget. Inference is pure; fitting imports scikit-learn lazily.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import xxhash

from predictors.base import PredictorFeatures

_WORD = re.compile(r"\w+")
_INTEGER = re.compile(r"\b\d{1,5}\b")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s", re.MULTILINE)
_CODE_CHARS = frozenset("{}[]();=<>_/\\|#$`")
_CODE_CHAR = re.compile("[" + re.escape("".join(sorted(_CODE_CHARS))) + "]")
_SHORT_CUES = (
    "brief", "briefly", "short", "concise", "one word", "one sentence", "yes or no", "classify",
    "true or false", "which of", "name a", "what is the", "translate", "rewrite", "correct",
)  # fmt: skip
_LONG_CUES = (
    "essay", "story", "article", "blog", "detailed", "detail", "explain", "describe", "list",
    "steps", "step by step", "code", "program", "function", "poem", "plan", "guide", "compare",
)  # fmt: skip
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)  # odd: a bijection on 64-bit words
_ROLL = np.uint64(1099511628211)


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How requests become vectors (JSON-serialisable; saved with every model).

    ``hash_features`` is the size of the hashed n-gram space (a power of two), ``svd_components`` the
    size of its dense summary, ``word_ngrams``/``char_ngrams`` the inclusive n-gram ranges,
    ``tenant_buckets`` how many hashed tenant slots there are, ``seed`` the hashing and SVD seed.
    """

    hash_features: int = 1 << 15
    svd_components: int = 64
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 5)
    tenant_buckets: int = 8
    use_idf: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hash_features < 2 or self.hash_features & (self.hash_features - 1):
            raise ValueError(f"hash_features must be a power of two ≥ 2, got {self.hash_features}")
        if self.svd_components < 1:
            raise ValueError(f"svd_components must be ≥ 1, got {self.svd_components}")
        for name in ("word_ngrams", "char_ngrams"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be a range 1 ≤ low ≤ high, got {(low, high)}")
        if self.tenant_buckets < 1:
            raise ValueError(f"tenant_buckets must be ≥ 1, got {self.tenant_buckets}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> FeatureConfig:
        if not isinstance(data, dict):
            raise ValueError("feature config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"feature config has unknown keys {unknown}")
        values = dict(data)
        for name in ("word_ngrams", "char_ngrams"):
            if name in values:
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"feature config: {error}") from None


# Far above the prompts the models learn from (AlpacaEval's longest is a few thousand characters).
MAX_TEXT_CHARS = 8_192

TEXT_FEATURE_NAMES = (
    "log_prompt_tokens", "log_chars", "log_words", "log_lines", "log_question_marks", "ends_with_question",
    "code_fences", "code_char_fraction", "log_list_lines", "log_largest_integer", "short_cues", "long_cues",
    "has_text", "log_max_tokens", "has_max_tokens",
)  # fmt: skip


def read_text(text: str | None) -> str:
    """The part of a prompt the text features read: its first ``MAX_TEXT_CHARS`` characters, so a
    huge prompt costs no more than a long one on the routing path."""
    return text[:MAX_TEXT_CHARS] if text else ""


def text_features(features: PredictorFeatures) -> list[float]:
    """The hand-made part of the vector, in ``TEXT_FEATURE_NAMES`` order."""
    full_chars = len(features.prompt_text or "")
    text = read_text(features.prompt_text)
    lowered = text.lower()
    words = _WORD.findall(lowered)
    integers = [int(match) for match in _INTEGER.findall(text)]
    stripped = text.rstrip()
    return [
        float(np.log1p(features.prompt_tokens)),
        float(np.log1p(full_chars)),
        float(np.log1p(len(words))),
        float(np.log1p(text.count("\n") + 1 if text else 0)),
        float(np.log1p(text.count("?"))),
        1.0 if stripped.endswith("?") else 0.0,
        float(text.count("```") > 0),
        len(_CODE_CHAR.findall(text)) / len(text) if text else 0.0,
        float(np.log1p(len(_LIST_LINE.findall(text)))),
        float(np.log1p(max(integers, default=0))),
        float(sum(cue in lowered for cue in _SHORT_CUES)),
        float(sum(cue in lowered for cue in _LONG_CUES)),
        1.0 if text else 0.0,
        float(np.log1p(features.max_tokens)),
        1.0 if features.max_tokens > 0 else 0.0,
    ]


def _slots(hashes: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Multiplicative hashing: the top bits of ``hash · odd constant`` pick a slot of the table."""
    shift = np.uint64(64 - (config.hash_features.bit_length() - 1))
    with np.errstate(over="ignore"):
        return ((hashes * _MIX) >> shift).astype(np.int64)


def _char_hashes(lowered: str, config: FeatureConfig) -> np.ndarray:
    """Rolling hashes of every character n-gram (whitespace collapsed); each n-gram length is offset
    by its own constant so that n-grams of different lengths do not collide on purpose."""
    data = np.frombuffer(" ".join(lowered.split()).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    low, high = config.char_ngrams
    parts = []
    rolling = data + np.uint64(config.seed)
    with np.errstate(over="ignore"):
        for n in range(1, high + 1):
            if n > 1:
                rolling = rolling[:-1] * _ROLL + data[n - 1 :]
            if rolling.size == 0:
                break
            if n >= low:
                parts.append(rolling + np.uint64(n) * _GOLDEN)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _word_hashes(lowered: str, config: FeatureConfig) -> np.ndarray:
    words = _WORD.findall(lowered)
    if not words:
        return np.zeros(0, dtype=np.uint64)
    hashes = (xxhash.xxh3_64_intdigest(word.encode(), seed=config.seed) for word in words)
    unigrams = np.fromiter(hashes, dtype=np.uint64, count=len(words))
    low, high = config.word_ngrams
    parts = []
    rolling = unigrams
    with np.errstate(over="ignore"):
        for n in range(1, high + 1):
            if n > 1:
                rolling = rolling[:-1] * _ROLL + unigrams[n - 1 :]
            if rolling.size == 0:
                break
            if n >= low:
                parts.append(rolling + np.uint64(n) * _GOLDEN)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def hashed_ngrams(text: str | None, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sparse hashed n-grams of ``text``: (indices, ``log1p(count)`` weights), words and characters
    each scaled to unit length so that neither dominates."""
    text = read_text(text)
    if not text:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    lowered = text.lower()
    indices, weights = [], []
    for hashes in (_word_hashes(lowered, config), _char_hashes(lowered, config)):
        if hashes.size == 0:
            continue
        unique, counts = np.unique(_slots(hashes, config), return_counts=True)
        weight = np.log1p(counts.astype(np.float32))
        indices.append(unique)
        weights.append(weight / np.linalg.norm(weight))
    if not indices:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(indices), np.concatenate(weights)


@dataclass(frozen=True, eq=False, slots=True)
class FeatureExtractor:
    """A fitted feature map: the config plus what was learned from the training requests."""

    config: FeatureConfig
    models: tuple[str, ...]
    idf: np.ndarray  # (hash_features,) float32
    projection: np.ndarray  # (hash_features, svd_components) float32
    center: np.ndarray  # (dimension,) float32
    scale: np.ndarray  # (dimension,) float32

    def __post_init__(self) -> None:
        c = self.config
        expected = (c.hash_features, c.svd_components)
        if self.idf.shape != (c.hash_features,) or self.projection.shape != expected:
            raise ValueError(
                f"feature arrays do not match the config: idf {self.idf.shape}, "
                f"projection {self.projection.shape}, expected ({c.hash_features}, {c.svd_components})"
            )
        if self.center.shape != (self.dimension,) or self.scale.shape != (self.dimension,):
            raise ValueError(f"center/scale must have {self.dimension} entries")

    @property
    def dimension(self) -> int:
        c = self.config
        return len(TEXT_FEATURE_NAMES) + len(self.models) + 1 + c.tenant_buckets + c.svd_components

    @classmethod
    def fit(cls, config: FeatureConfig, requests: Sequence[PredictorFeatures]) -> FeatureExtractor:
        """Learn the model list, idf, SVD projection and standardisation from training requests."""
        from scipy.sparse import csr_matrix
        from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        if not requests:
            raise ValueError("cannot fit features on zero requests")
        models = tuple(sorted({r.model for r in requests}))
        # The text summary is fitted on distinct prompts: a prompt answered by many models counts once.
        texts = sorted({r.prompt_text for r in requests if r.prompt_text})
        sparse = [hashed_ngrams(text, config) for text in texts]
        idf = np.ones(config.hash_features, dtype=np.float32)
        projection = np.zeros((config.hash_features, config.svd_components), dtype=np.float32)
        if texts:
            indptr = np.cumsum([0, *(len(indices) for indices, _ in sparse)])
            matrix = csr_matrix(
                (np.concatenate([w for _, w in sparse]), np.concatenate([i for i, _ in sparse]), indptr),
                shape=(len(texts), config.hash_features),
            )
            if config.use_idf:
                document_frequency = np.bincount(matrix.indices, minlength=config.hash_features)
                idf = (np.log((1 + len(texts)) / (1 + document_frequency)) + 1).astype(np.float32)
            weighted = matrix.multiply(idf[np.newaxis, :]).tocsr()
            components = min(config.svd_components, max(1, min(weighted.shape) - 1))
            svd = TruncatedSVD(n_components=components, random_state=config.seed, algorithm="randomized")
            with threadpool_limits(limits=1):
                svd.fit(weighted)
            projection[:, :components] = svd.components_.T.astype(np.float32)
        dimension = len(TEXT_FEATURE_NAMES) + len(models) + 1 + config.tenant_buckets + config.svd_components
        unscaled = cls(
            config, models, idf, projection, np.zeros(dimension, np.float32), np.ones(dimension, np.float32)
        )
        raw = unscaled.transform(requests)
        deviation = raw.std(axis=0)
        return cls(
            config,
            models,
            idf,
            projection,
            raw.mean(axis=0).astype(np.float32),
            np.where(deviation > 1e-6, deviation, 1.0).astype(np.float32),
        )

    def transform_one(self, request: PredictorFeatures) -> np.ndarray:
        """The (dimension,) float32 vector of one request."""
        c = self.config
        vector = np.zeros(self.dimension, dtype=np.float32)
        text_part = text_features(request)
        vector[: len(text_part)] = text_part
        offset = len(text_part)
        try:
            vector[offset + self.models.index(request.model)] = 1.0
        except ValueError:
            vector[offset + len(self.models)] = 1.0  # a model not seen in training
        offset += len(self.models) + 1
        if request.tenant is not None:
            vector[
                offset + xxhash.xxh3_64_intdigest(request.tenant.encode(), seed=c.seed) % c.tenant_buckets
            ] = 1.0
        offset += c.tenant_buckets
        indices, weights = hashed_ngrams(request.prompt_text, c)
        if indices.size:
            vector[offset:] = (weights * self.idf[indices]) @ self.projection[indices]
        vector -= self.center
        vector /= self.scale
        return vector

    def transform(self, requests: Sequence[PredictorFeatures]) -> np.ndarray:
        """The (n, dimension) float32 matrix of ``requests``; row i equals ``transform_one(requests[i])``."""
        matrix = np.empty((len(requests), self.dimension), dtype=np.float32)
        for row, request in enumerate(requests):
            matrix[row] = self.transform_one(request)
        return matrix

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON parameters and named arrays that ``from_state`` turns back into this extractor."""
        params = {"config": self.config.to_json(), "models": list(self.models)}
        arrays = {"idf": self.idf, "projection": self.projection, "center": self.center, "scale": self.scale}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureExtractor:
        try:
            config = FeatureConfig.from_json(params["config"])
            models = tuple(str(model) for model in params["models"])
            return cls(
                config,
                models,
                *(np.asarray(arrays[name], np.float32) for name in ("idf", "projection", "center", "scale")),
            )
        except KeyError as error:
            raise ValueError(f"feature state lacks {error.args[0]!r}") from None
