import math

import pytest

from predictors.base import PredictorFeatures
from protos.routing import RoutingRequest
from replica_agent.engine.request import RequestSpec, SamplingParams
from router.sim.policies import build_sim_policy, forced_predictor, sim_policy_names
from router.sim.predict import (
    FeaturePredictor,
    PredictorSpecError,
    TrueLengthPredictor,
    build_predictor,
    parse_predictor,
)


def _spec(request_id: str, output_tokens: int) -> RequestSpec:
    return RequestSpec(request_id, (1, 2, 3), 0.0, SamplingParams(max_tokens=output_tokens, ignore_eos=True))


FEATURES = PredictorFeatures.from_request(RoutingRequest("x", "m", 3, (), 4096))


def test_oracle_gives_the_true_length() -> None:
    estimate = build_predictor("oracle").estimate(_spec("a", 321), FEATURES)
    assert estimate.mean == estimate.p50 == 321


def test_noisy_errors_are_seeded_per_request_and_lognormal() -> None:
    predictor = build_predictor("noisy:0.5", seed=4)
    first = predictor.estimate(_spec("a", 100), FEATURES)
    assert first == predictor.estimate(_spec("a", 100), FEATURES)
    assert first != predictor.estimate(_spec("b", 100), FEATURES)
    assert first.mean == pytest.approx(first.p50 * math.exp(0.125))
    ratios = [math.log(predictor.estimate(_spec(str(i), 100), FEATURES).p50 / 100) for i in range(3000)]
    mean = sum(ratios) / len(ratios)
    std = (sum((r - mean) ** 2 for r in ratios) / len(ratios)) ** 0.5
    assert abs(mean) < 0.05 and std == pytest.approx(0.5, rel=0.08)


def test_none_is_the_production_running_average() -> None:
    assert isinstance(build_predictor("none"), FeaturePredictor)
    assert build_predictor("noisy:0") == TrueLengthPredictor(0.0)


@pytest.mark.parametrize("spec", ["noisy:x", "noisy:-1", "magic", "noisy:inf"])
def test_bad_predictor_specs(spec: str) -> None:
    with pytest.raises(PredictorSpecError):
        parse_predictor(spec)


def test_oracle_policy_is_simulation_only_and_imposes_true_lengths() -> None:
    assert "oracle" in sim_policy_names()
    assert forced_predictor("oracle") == "oracle" and forced_predictor("sal") is None
    assert build_sim_policy("oracle").name == "oracle"
    with pytest.raises(ValueError, match="unknown policy"):
        build_sim_policy("clairvoyant")
