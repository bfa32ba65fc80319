from __future__ import annotations

import numpy as np
import pytest

from predictors.base import PredictorFeatures
from predictors.baselines import GlobalMeanPredictor, GroupedRunningAverage, LengthRegression, capped_estimate
from predictors.data import to_features
from predictors.features import FeatureConfig, FeatureExtractor
from predictors.learned import EncodedFeatures, LearnedPredictor, fit_predictor
from predictors.sklearn_model import BoostingConfig
from tests.predictors.synthetic import synthetic_rows

ROWS = synthetic_rows(prompts=30)
REQUESTS = [to_features(row) for row in ROWS]
LENGTHS = [row.output_tokens for row in ROWS]

FAST = BoostingConfig(max_iter=40)


class FixedModel:
    """A vector model that always answers mean 500, p50 400, p90 900 and four bins."""

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.tile([500.0, 400.0, 900.0], (len(matrix), 1))

    def predict_bins(self, matrix: np.ndarray) -> np.ndarray:
        return np.tile([0.1, 0.2, 0.3, 0.4], (len(matrix), 1))


def learned_with_bins() -> LearnedPredictor:
    extractor = FeatureExtractor.fit(FeatureConfig(hash_features=256, svd_components=2), REQUESTS)
    return LearnedPredictor("torch-dist", extractor, FixedModel(), (100, 300, 1000, 4000))


def test_estimates_are_capped_by_max_tokens_and_bins_fold_at_the_cap() -> None:
    predictor = learned_with_bins()
    free = predictor.predict(PredictorFeatures("terse-model", 10, 0, prompt_text="hi"))
    assert (free.mean, free.p50, free.p90) == (500.0, 400.0, 900.0)
    assert free.bins == ((100, 0.1), (300, 0.2), (1000, 0.3), (4000, 0.4))
    capped = predictor.predict(PredictorFeatures("terse-model", 10, 250, prompt_text="hi"))
    assert (capped.mean, capped.p50, capped.p90) == (250.0, 250.0, 250.0)
    assert capped.bins == ((100, 0.1), (300, 0.9))
    many = predictor.predict_many([PredictorFeatures("terse-model", 10, 250), PredictorFeatures("x", 1, 0)])
    np.testing.assert_array_equal(many, [[250, 250, 250], [500, 400, 900]])


@pytest.mark.parametrize("kind", ["mean", "running_average", "length_regression", "sklearn"])
def test_every_kind_caps_by_max_tokens(kind: str) -> None:
    config = FeatureConfig(hash_features=256, svd_components=2)
    predictor = fit_predictor(
        kind, REQUESTS, LENGTHS, [r.prompt_key for r in ROWS], 0, feature_config=config, boosting=FAST
    )
    estimate = predictor.predict(
        PredictorFeatures("verbose-model", 10, 7, prompt_text="Write a long essay on tea")
    )
    assert max(estimate.mean, estimate.p50, estimate.p90) <= 7


def test_capped_estimate_keeps_p90_at_or_above_p50() -> None:
    estimate = capped_estimate(10.0, 30.0, 20.0, 0)
    assert estimate.p90 == estimate.p50 == 30.0
    assert capped_estimate(-5.0, -1.0, -1.0, 0).mean == 0.0


def test_running_average_starts_from_each_models_training_lengths_and_keeps_learning() -> None:
    predictor = GroupedRunningAverage.fit(REQUESTS, LENGTHS)
    terse = predictor.predict(PredictorFeatures("terse-model", 10, 0))
    verbose = predictor.predict(PredictorFeatures("verbose-model", 10, 0))
    assert verbose.p50 > 2 * terse.p50
    unseen = predictor.predict(PredictorFeatures("unseen", 10, 0))
    assert terse.p50 < unseen.p50 < verbose.p50
    for _ in range(200):
        predictor.observe(PredictorFeatures("terse-model", 10, 0), 5000)
    assert predictor.predict(PredictorFeatures("terse-model", 10, 0)).p50 > 1000


def test_length_regression_learns_the_prompt_length_slope() -> None:
    requests = [PredictorFeatures("m", tokens, 0) for tokens in (10, 20, 40, 80, 160, 320) for _ in range(3)]
    lengths = [2 * r.prompt_tokens for r in requests]
    model = LengthRegression.fit(requests, lengths)
    assert model.slope == pytest.approx(1.0, abs=0.05)
    assert model.predict(PredictorFeatures("m", 100, 0)).p50 == pytest.approx(200, rel=0.1)


def test_global_mean_ignores_the_request() -> None:
    model = GlobalMeanPredictor.fit([1, 2, 3, 100])
    assert model.predict(PredictorFeatures("a", 1, 0)) == model.predict(PredictorFeatures("b", 900, 0))
    assert model.predict(PredictorFeatures("a", 1, 0)).mean == 26.5


def test_unknown_kinds_and_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown predictor kind 'oracle'"):
        fit_predictor("oracle", REQUESTS, LENGTHS, [r.prompt_key for r in ROWS], 0)
    with pytest.raises(ValueError, match="requests"):
        fit_predictor("mean", REQUESTS, LENGTHS[:-1], [r.prompt_key for r in ROWS], 0)


class CountingEncoder:
    """A stand-in sentence encoder: a 3-number vector per text, counting the texts it encodes."""

    dimension = 3

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        return np.array([[len(t), t.count(" "), 1.0] for t in texts], dtype=np.float32)


def test_encoded_features_put_the_embedding_first_and_encode_each_prompt_once() -> None:
    dense = FeatureExtractor.fit(FeatureConfig(hash_features=256, svd_components=2), REQUESTS)
    encoder = CountingEncoder()
    features = EncodedFeatures(encoder, dense)
    matrix = features.transform(REQUESTS)
    assert encoder.encoded == len({r.prompt_text for r in REQUESTS}) == len(REQUESTS) // 2
    assert matrix.shape == (len(REQUESTS), 3 + dense.dimension) == (len(REQUESTS), features.dimension)
    np.testing.assert_array_equal(matrix[5], features.transform_one(REQUESTS[5]))
