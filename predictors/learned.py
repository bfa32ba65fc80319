"""``LearnedPredictor``: a feature map plus a vector model, behind the ``OutputLengthPredictor`` contract.

The vector model returns mean, p50 and p90 per row (and, when it has them, probabilities over
length bins); the predictor caps them by the request's ``max_tokens``. ``observe`` learns nothing:
online correction wraps this predictor from outside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from predictors.base import LengthEstimate, OutputLengthPredictor, PredictorFeatures
from predictors.baselines import GlobalMeanPredictor, GroupedRunningAverage, LengthRegression, capped_estimate
from predictors.features import FeatureConfig, FeatureExtractor, read_text
from predictors.sklearn_model import BoostedLengthModel, BoostingConfig


class VectorModel(Protocol):
    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """(n, 3): mean, p50, p90 in tokens for the rows of ``matrix``."""
        ...


class BinnedVectorModel(VectorModel, Protocol):
    def predict_bins(self, matrix: np.ndarray) -> np.ndarray:
        """(n, bins): the probability of each length bin."""
        ...


class TextEncoder(Protocol):
    @property
    def dimension(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


class FeatureSource(Protocol):
    @property
    def dimension(self) -> int: ...

    def transform_one(self, request: PredictorFeatures) -> np.ndarray: ...

    def transform(self, requests: Sequence[PredictorFeatures]) -> np.ndarray: ...


@dataclass(frozen=True, eq=False, slots=True)
class EncodedFeatures:
    """A sentence encoder's vector of the prompt followed by the dense request features."""

    encoder: TextEncoder
    dense: FeatureExtractor
    encoder_dir: Path | None = None

    @property
    def dimension(self) -> int:
        return self.encoder.dimension + self.dense.dimension

    def transform_one(self, request: PredictorFeatures) -> np.ndarray:
        embedded = self.encoder.encode([read_text(request.prompt_text)])[0]
        return np.concatenate([embedded.astype(np.float32), self.dense.transform_one(request)])

    def transform(self, requests: Sequence[PredictorFeatures]) -> np.ndarray:
        texts = [read_text(r.prompt_text) for r in requests]
        distinct = sorted(set(texts))  # a prompt answered by many models is encoded once
        vectors = (
            self.encoder.encode(distinct).astype(np.float32) if distinct else np.zeros((0, 0), np.float32)
        )
        position = {text: row for row, text in enumerate(distinct)}
        embedded = vectors[[position[text] for text in texts]].reshape(len(texts), self.encoder.dimension)
        return np.concatenate([embedded, self.dense.transform(requests)], axis=1)


@dataclass(frozen=True, eq=False, slots=True)
class LearnedPredictor:
    """``kind`` names the model family (``sklearn``, ``torch-rank``, ``torch-dist``, ``embedding``);
    ``bin_bounds`` are the upper bounds of the model's length bins, empty when it has none."""

    kind: str
    features: FeatureSource
    model: VectorModel
    bin_bounds: tuple[int, ...] = ()

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        row = self.features.transform_one(features)[np.newaxis, :]
        mean, p50, p90 = (float(v) for v in self.model.predict(row)[0])
        bins: tuple[tuple[int, float], ...] = ()
        if self.bin_bounds and hasattr(self.model, "predict_bins"):
            probabilities = self.model.predict_bins(row)[0]
            bins = tuple((bound, float(p)) for bound, p in zip(self.bin_bounds, probabilities, strict=True))
        return capped_estimate(mean, p50, p90, features.max_tokens, bins)

    def predict_many(self, requests: Sequence[PredictorFeatures]) -> np.ndarray:
        """(n, 3) capped mean, p50, p90 for many requests at once (evaluation and training reports)."""
        if not requests:
            return np.zeros((0, 3))
        estimates = np.maximum(self.model.predict(self.features.transform(requests)), 0.0)
        estimates[:, 2] = np.maximum(estimates[:, 2], estimates[:, 1])
        caps = np.array([r.max_tokens if r.max_tokens > 0 else np.inf for r in requests], dtype=np.float64)
        capped: np.ndarray = np.minimum(estimates, caps[:, np.newaxis])
        return capped

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        """Learns nothing: the trained model is fixed."""


LEARNED_KINDS = ("sklearn", "torch-rank", "torch-dist", "embedding")
BASELINE_KINDS = ("mean", "running_average", "length_regression")
Progress = Callable[[int, int], None]


def fit_predictor(
    kind: str,
    requests: Sequence[PredictorFeatures],
    lengths: Sequence[int],
    prompt_groups: Sequence[str],
    seed: int,
    *,
    feature_config: FeatureConfig | None = None,
    boosting: BoostingConfig | None = None,
    encoder_dir: Path | None = None,
    progress: Progress | None = None,
) -> OutputLengthPredictor:
    """A predictor of ``kind`` trained on ``requests`` with true ``lengths``; ``prompt_groups`` names
    each request's prompt (the torch rank head holds out whole prompts for its calibration).
    ``progress(done, total)`` reports the model's own training steps."""
    if not len(requests) == len(lengths) == len(prompt_groups):
        raise ValueError(f"{len(requests)} requests, {len(lengths)} lengths, {len(prompt_groups)} groups")
    if kind == "mean":
        return GlobalMeanPredictor.fit(lengths)
    if kind == "running_average":
        return GroupedRunningAverage.fit(requests, lengths, by_tenant=any(r.tenant for r in requests))
    if kind == "length_regression":
        return LengthRegression.fit(requests, lengths)
    if kind not in LEARNED_KINDS:
        raise ValueError(
            f"unknown predictor kind {kind!r}; choose from {', '.join(BASELINE_KINDS + LEARNED_KINDS)}"
        )
    dense = FeatureExtractor.fit(feature_config or FeatureConfig(seed=seed), requests)
    features: FeatureExtractor | EncodedFeatures = dense
    if kind == "embedding":
        from predictors.embedding import SentenceEncoder

        features = EncodedFeatures(SentenceEncoder(encoder_dir), dense, encoder_dir)
    matrix = features.transform(requests)
    targets = np.asarray(lengths, dtype=np.float64)
    if kind == "sklearn":
        return LearnedPredictor(
            kind, features, BoostedLengthModel.fit(matrix, targets, seed, boosting, progress)
        )
    from predictors import torch_heads

    if kind == "torch-rank":
        groups = np.unique(np.asarray(prompt_groups), return_inverse=True)[1]
        model = torch_heads.train_rank_model(matrix, targets, seed, progress=progress, groups=groups)
    else:
        model = torch_heads.train_dist_model(matrix, targets, seed, progress=progress)
    return LearnedPredictor(kind, features, model, torch_heads.LENGTH_BINS)
