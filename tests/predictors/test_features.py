from __future__ import annotations

import json

import numpy as np
import pytest

from predictors.base import PredictorFeatures
from predictors.data import to_features
from predictors.features import (
    MAX_TEXT_CHARS,
    TEXT_FEATURE_NAMES,
    FeatureConfig,
    FeatureExtractor,
    hashed_ngrams,
    text_features,
)
from tests.predictors.synthetic import synthetic_rows

SMALL = FeatureConfig(hash_features=1 << 12, svd_components=8, tenant_buckets=4)


def requests() -> list[PredictorFeatures]:
    return [to_features(row) for row in synthetic_rows(prompts=40)]


def test_config_round_trips_through_json() -> None:
    config = FeatureConfig(hash_features=256, char_ngrams=(2, 4), seed=5)
    assert FeatureConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize(
    "data", [{"hash_features": 1000}, {"svd_components": 0}, {"char_ngrams": [3, 2]}, {"colour": "red"}, [1]]
)
def test_bad_configs_are_rejected(data: object) -> None:
    with pytest.raises(ValueError):
        FeatureConfig.from_json(data)


def test_fitting_twice_gives_identical_vectors() -> None:
    first = FeatureExtractor.fit(SMALL, requests()).transform(requests())
    second = FeatureExtractor.fit(SMALL, requests()).transform(requests())
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, second)


def test_batch_rows_equal_single_rows_and_the_layout_is_as_documented() -> None:
    extractor = FeatureExtractor.fit(SMALL, requests())
    matrix = extractor.transform(requests())
    assert matrix.shape == (80, len(TEXT_FEATURE_NAMES) + 2 + 1 + 4 + 8) == (80, extractor.dimension)
    np.testing.assert_array_equal(matrix[7], extractor.transform_one(requests()[7]))
    assert np.abs(matrix.mean(axis=0)).max() < 1e-4  # standardised on the training requests


def test_model_identity_and_text_change_the_vector() -> None:
    extractor = FeatureExtractor.fit(SMALL, requests())
    base = PredictorFeatures("terse-model", 8, 0, prompt_text="Write a long essay on jazz")
    vector = extractor.transform_one(base)
    other_model = extractor.transform_one(
        PredictorFeatures("verbose-model", 8, 0, prompt_text=base.prompt_text)
    )
    unknown_model = extractor.transform_one(
        PredictorFeatures("new-model", 8, 0, prompt_text=base.prompt_text)
    )
    other_text = extractor.transform_one(PredictorFeatures("terse-model", 8, 0, prompt_text="One word: tea"))
    assert not np.array_equal(vector, other_model)
    assert not np.array_equal(vector, unknown_model)
    assert not np.array_equal(vector[-8:], other_text[-8:])


def test_requests_without_text_still_get_a_vector() -> None:
    extractor = FeatureExtractor.fit(SMALL, requests())
    vector = extractor.transform_one(PredictorFeatures("terse-model", 100, 50, tenant="acme"))
    assert vector.shape == (extractor.dimension,) and np.isfinite(vector).all()


def test_hashed_ngrams_are_deterministic_and_seeded() -> None:
    text = "Explain how KV caches work, step by step."
    indices, weights = hashed_ngrams(text, SMALL)
    again = hashed_ngrams(text, SMALL)
    np.testing.assert_array_equal(indices, again[0])
    np.testing.assert_array_equal(weights, again[1])
    assert indices.min() >= 0 and indices.max() < SMALL.hash_features
    reseeded = FeatureConfig(hash_features=1 << 12, svd_components=8, seed=1)
    assert not np.array_equal(np.sort(indices), np.sort(hashed_ngrams(text, reseeded)[0]))


def test_state_round_trip_rebuilds_the_same_extractor() -> None:
    extractor = FeatureExtractor.fit(SMALL, requests())
    params, arrays = extractor.to_state()
    rebuilt = FeatureExtractor.from_state(json.loads(json.dumps(params)), arrays)
    np.testing.assert_array_equal(rebuilt.transform(requests()), extractor.transform(requests()))


def test_a_huge_prompt_is_read_only_up_to_the_cap() -> None:
    head = "Explain how a router balances load. " * (MAX_TEXT_CHARS // 36 + 1)
    huge = head + "tail words that come after the cap " * 10_000
    config = FeatureConfig(hash_features=1 << 10)
    capped = hashed_ngrams(head[:MAX_TEXT_CHARS], config)
    for got, want in zip(hashed_ngrams(huge, config), capped, strict=True):
        assert np.array_equal(got, want)
    short = PredictorFeatures("m", 10, 0, prompt_text=head[:MAX_TEXT_CHARS])
    long = PredictorFeatures("m", 10, 0, prompt_text=huge)
    differing = [
        name
        for name, a, b in zip(TEXT_FEATURE_NAMES, text_features(short), text_features(long), strict=True)
        if a != b
    ]
    assert differing == ["log_chars"]  # the only feature that sees the whole length
