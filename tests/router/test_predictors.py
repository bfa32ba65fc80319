"""The running-average output-length predictor."""

from __future__ import annotations

import math
import random

import pytest

from predictors.base import LengthEstimate, OutputLengthPredictor, PredictorFeatures
from predictors.running_average import RunningAveragePredictor
from protos.routing import RoutingRequest

CHAT = PredictorFeatures("llama-3.1-8b", prompt_tokens=500, max_tokens=4096)


def test_the_prior_answers_before_any_observation() -> None:
    estimate = RunningAveragePredictor().predict(CHAT)
    assert estimate.p50 == pytest.approx(151)
    assert estimate.mean == pytest.approx(151 * math.exp(0.86**2 / 2))
    assert estimate.p90 == pytest.approx(math.expm1(math.log1p(151) + 1.2815515655446004 * 0.86))
    assert estimate.bins == ()


def test_converges_to_the_observed_distribution() -> None:
    predictor: OutputLengthPredictor = RunningAveragePredictor()
    rng = random.Random(1)
    for _ in range(3000):
        predictor.observe(CHAT, round(rng.lognormvariate(math.log(400), 0.5)))
    estimate = predictor.predict(CHAT)
    assert estimate.p50 == pytest.approx(400, rel=0.15)
    assert estimate.mean == pytest.approx(400 * math.exp(0.125), rel=0.15)
    assert estimate.p90 == pytest.approx(400 * math.exp(1.2816 * 0.5), rel=0.2)


def test_follows_drift_and_a_constant_length_collapses_the_spread() -> None:
    predictor = RunningAveragePredictor()
    for _ in range(200):
        predictor.observe(CHAT, 50)
    for _ in range(200):
        predictor.observe(CHAT, 800)
    estimate = predictor.predict(CHAT)
    assert estimate.mean == pytest.approx(800, rel=0.01)
    assert estimate.p50 == pytest.approx(800, rel=0.01) and estimate.p90 == pytest.approx(800, rel=0.05)


def test_models_are_separate_and_predictions_capped_by_max_tokens() -> None:
    predictor = RunningAveragePredictor(prior_weight=0.0)
    predictor.observe(CHAT, 1000)
    assert predictor.predict(CHAT).mean == pytest.approx(1000)
    assert predictor.observations("llama-3.1-8b") == 1 and predictor.observations("qwen-7b") == 0
    assert predictor.predict(PredictorFeatures("qwen-7b", 500, 4096)).p50 == pytest.approx(151)
    capped = predictor.predict(PredictorFeatures("llama-3.1-8b", 500, max_tokens=64))
    assert capped == LengthEstimate(64.0, 64.0, 64.0)


def test_the_prior_weighs_like_observations() -> None:
    predictor = RunningAveragePredictor(prior_median=100, prior_sigma=0.0, prior_weight=1.0)
    predictor.observe(CHAT, 300)
    assert predictor.predict(CHAT).mean == pytest.approx(200)  # (100 + 300) / 2


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="actual_tokens"):
        RunningAveragePredictor().observe(CHAT, -1)
    with pytest.raises(ValueError, match="smoothing"):
        RunningAveragePredictor(smoothing=0.0)
    with pytest.raises(ValueError, match="negative"):
        PredictorFeatures("m", prompt_tokens=-1, max_tokens=10)


def test_features_from_a_routing_request() -> None:
    req = RoutingRequest("r", "llama-3.1-8b", 120, (), 256, user="alice")
    features = PredictorFeatures.from_request(req, tenant="acme")
    assert (features.model, features.prompt_tokens, features.max_tokens) == ("llama-3.1-8b", 120, 256)
    assert (features.user, features.tenant, features.prompt_text) == ("alice", "acme", None)
