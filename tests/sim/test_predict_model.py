"""A saved output-length model in the simulator, prompt text from the trace, and the AlpacaEval
workload (real prompts with a real model's answer lengths)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetroute.simulate_cmd import simulate as simulate_command
from predictors.base import LengthEstimate, PredictorFeatures
from predictors.baselines import LengthRegression
from predictors.guarded import GuardedPredictor
from predictors.saved import save_predictor
from protos.block_hash import BlockHasher
from replica_agent.engine.request import RequestSpec, SamplingParams
from router.policy.registry import build_policy
from router.sim.fleet import FleetSpec, ReplicaGroup, build_fleet
from router.sim.predict import FeaturePredictor, PredictorSpecError, build_predictor, parse_predictor
from router.sim.routing import SimRouter
from router.sim.runner import scaled_specs
from router.sim.simulator import SimConfig, Simulator
from router.sim.sources import load_trace
from router.sim.traces import TraceFormatError, TraceRequest, prompt_texts
from router.sim.workloads import prompted_workload
from router.state.cluster import ClusterState

MODEL = "llama-3.1-8b"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained model: answers about three times as long as their prompt."""
    requests = [PredictorFeatures(MODEL, tokens, 4096) for tokens in range(5, 400, 5)]
    lengths = [3 * r.prompt_tokens + (7 if i % 2 else -7) for i, r in enumerate(requests)]
    return save_predictor(LengthRegression.fit(requests, lengths), tmp_path_factory.mktemp("predictor"))


def _spec(request_id: str, prompt_tokens: int = 100, output_tokens: int = 50) -> RequestSpec:
    params = SamplingParams(max_tokens=output_tokens, ignore_eos=True)
    return RequestSpec(request_id, tuple(range(prompt_tokens)), 0.0, params)


FEATURES = PredictorFeatures(MODEL, 100, 4096)


def test_a_model_directory_is_a_predictor_spec(model_dir: Path) -> None:
    assert parse_predictor(f"model:{model_dir}") == f"model:{model_dir.resolve()}"
    assert parse_predictor(f"  model-raw:{model_dir} ") == f"model-raw:{model_dir.resolve()}"
    assert parse_predictor(str(model_dir)) == f"model:{model_dir.resolve()}"  # a bare directory


def test_a_trained_model_changes_the_predictions_the_simulator_sees(model_dir: Path) -> None:
    none = build_predictor("none").estimate(_spec("a"), FEATURES)
    guarded = build_predictor(f"model:{model_dir}")
    raw = build_predictor(f"model-raw:{model_dir}")
    assert isinstance(guarded, FeaturePredictor) and isinstance(guarded.predictor, GuardedPredictor)
    assert none.p50 == pytest.approx(151)  # the running average's prior
    estimate = raw.estimate(_spec("a"), FEATURES)
    assert estimate.p50 == pytest.approx(300, rel=0.1)
    assert guarded.estimate(_spec("a"), FEATURES) == estimate  # no correction before any feedback


@pytest.mark.parametrize("spec", ["model:", "model:/no/such/dir", "model-raw:/no/such/dir"])
def test_a_bad_model_directory_is_refused_in_one_line(spec: str) -> None:
    with pytest.raises(PredictorSpecError) as error:
        parse_predictor(spec)
    assert "\n" not in str(error.value)


def test_the_command_refuses_a_bad_or_damaged_model_directory(tmp_path: Path, model_dir: Path) -> None:
    base = ["--trace", "poisson", "--limit", "20", "--rate", "1"]
    result = CliRunner().invoke(simulate_command, [*base, "--predictor", f"model:{tmp_path / 'none'}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"no predictor directory at {tmp_path / 'none'}" in result.output
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "metadata.json").write_text((model_dir / "metadata.json").read_text())
    result = CliRunner().invoke(simulate_command, [*base, "--predictor", str(damaged)])
    assert (
        result.exit_code == 2 and "missing params.json" in result.output and "Traceback" not in result.output
    )


@dataclass
class RecordingPredictor:
    seen: list[PredictorFeatures] = field(default_factory=list)

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        self.seen.append(features)
        return LengthEstimate(42.4, 40.0, 80.0)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        self.seen.append(features)


def test_the_router_side_passes_prompt_text_and_forwards_the_predicted_mean() -> None:
    recorder = RecordingPredictor()
    predictor = FeaturePredictor(recorder, prompts={"req-0": "Write a sonnet"})
    router = SimRouter(ClusterState(), build_policy("sal"), predictor, BlockHasher(16, 0), MODEL, 4096, 0)
    shaped = router.shape(_spec("req-0"), 0.0)
    assert shaped.features.prompt_text == "Write a sonnet" and recorder.seen == [shaped.features]
    assert shaped.spec.predicted_output_tokens == 42  # the mean, as the production router forwards it
    assert router.shape(_spec("req-1"), 0.0).features.prompt_text is None
    oracle = SimRouter(
        ClusterState(), build_policy("sal"), build_predictor("oracle"), BlockHasher(16, 0), MODEL, 4096, 0
    )
    assert oracle.shape(_spec("x", output_tokens=77), 0.0).spec.predicted_output_tokens == 77


def test_a_simulation_with_a_saved_model_feeds_its_drift_guard(model_dir: Path) -> None:
    trace = [
        TraceRequest(i * 0.05, 20 + 10 * (i % 7), 30 + 5 * (i % 5), prompt=f"prompt {i}") for i in range(120)
    ]
    predictor = build_predictor(f"model:{model_dir}", prompts=prompt_texts(trace))
    fleet = build_fleet(FleetSpec(replicas=(ReplicaGroup(gpu="a100-80gb", count=2),)))
    result = Simulator(fleet, build_policy("sal"), SimConfig(), predictor=predictor).run(scaled_specs(trace))
    assert len(result.records) == 120
    assert isinstance(predictor, FeaturePredictor) and isinstance(predictor.predictor, GuardedPredictor)
    state = predictor.predictor.state
    assert state.samples == 120 and state.model_error is not None and state.baseline_error is not None
    assert state.model_error != state.baseline_error


def test_prompted_workload_resamples_whole_rows_at_poisson_arrivals() -> None:
    rows = [TraceRequest(0.0, 10 + i, 100 + i, prompt=f"p{i}") for i in range(5)]
    trace = prompted_workload(rows, rate_per_s=2.0, count=400, seed=3)
    assert len(trace) == 400 and trace[0].arrival_s == 0.0
    assert all(
        r.output_tokens - r.prompt_tokens == 90 and r.prompt == f"p{r.prompt_tokens - 10}" for r in trace
    )
    assert trace[-1].arrival_s / 399 == pytest.approx(0.5, rel=0.15)
    assert prompted_workload(rows, 2.0, count=400, seed=3) == trace
    assert prompt_texts(trace[:2]) == {"req-0": trace[0].prompt, "req-1": trace[1].prompt}
    with pytest.raises(ValueError, match="empty"):
        prompted_workload([], 1.0, count=3)


def test_the_alpaca_eval_workload_carries_real_prompts_and_answer_lengths() -> None:
    trace = load_trace("alpaca_eval", limit=50, seed=1)
    assert len(trace) == 50 and all(r.prompt for r in trace)
    assert all(b.arrival_s >= a.arrival_s for a, b in itertools.pairwise(trace))
    assert len({r.output_tokens for r in trace}) > 30  # real, varied answer lengths
    other = load_trace("alpaca_eval:gpt4_1106_preview", limit=50, seed=1)
    assert [r.prompt for r in other] == [r.prompt for r in trace]  # same draws, another model's answers
    assert [r.output_tokens for r in other] != [r.output_tokens for r in trace]
    with pytest.raises(TraceFormatError, match="no AlpacaEval answers from generator 'nobody'"):
        load_trace("alpaca_eval:nobody")
