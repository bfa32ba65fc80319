"""The router's output-length predictor: the ``predictor:`` config section, a saved model loaded at
start (a bad directory refused in one line), prompt text and tenant passed to it, the predicted
length forwarded to the replica, and the predictor metrics, over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fleetroute.cli import main
from predictors.base import PredictorFeatures
from predictors.baselines import LengthRegression
from predictors.drift import DriftState, PredictionSource
from predictors.guarded import GuardedPredictor
from predictors.online import OnlineCorrectedPredictor
from predictors.running_average import RunningAveragePredictor
from predictors.saved import save_predictor
from protos.generation import GenerateInput
from router.config import PredictorConfig, RouterConfigError, load_router_config
from router.request_shaper import RequestShaper
from router.service.local_fleet import fleet_from_gpus
from router.service.router import load_length_predictor
from router.service.router_metrics import RouterMetrics
from tests.router.service.fleet_thread import FleetThread

MODEL = "llama-3.1-8b"


def save_length_regression(directory: Path) -> Path:
    """A small trained model: answers about three times as long as their prompt."""
    requests = [PredictorFeatures(MODEL, tokens, 4096) for tokens in range(5, 400, 5)]
    lengths = [3 * r.prompt_tokens + (7 if i % 2 else -7) for i, r in enumerate(requests)]
    return save_predictor(LengthRegression.fit(requests, lengths), directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_length_regression(tmp_path_factory.mktemp("predictor"))


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_the_default_is_the_running_average() -> None:
    assert isinstance(load_length_predictor(PredictorConfig()), RunningAveragePredictor)


def test_a_model_dir_loads_the_guarded_corrected_model(tmp_path: Path, model_dir: Path) -> None:
    config = load_router_config(
        _config(tmp_path, f"predictor:\n  model_dir: {model_dir}\n  drift: {{window: 20, min_samples: 10}}\n")
    ).predictor
    assert config.kind is None and config.learned
    predictor = load_length_predictor(config)
    assert isinstance(predictor, GuardedPredictor) and isinstance(predictor.model, OnlineCorrectedPredictor)
    assert predictor.monitor.settings.window == 20
    uncorrected = load_length_predictor(
        PredictorConfig.model_validate({"model_dir": model_dir, "online_correction": {"enabled": False}})
    )
    assert isinstance(uncorrected, GuardedPredictor) and not isinstance(
        uncorrected.model, OnlineCorrectedPredictor
    )
    estimate = predictor.predict(PredictorFeatures(MODEL, 100, 4096))
    assert 250 < estimate.p50 < 350  # the saved model's answer, not the running average's prior 151


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("predictor: {kind: model}", "predictor: model_dir is required when kind is model"),
        ("predictor: {kind: running_average, model_dir: x}", "model_dir is only for kind model"),
        ("predictor: {kind: magic}", "predictor.kind"),
        ("predictor: {drift: {window: 10, min_samples: 20}}", "min_samples (20) cannot exceed window (10)"),
        ("predictor: {online_correction: {max_factor: 0.5}}", "predictor.online_correction.max_factor"),
    ],
)
def test_bad_predictor_settings_read_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RouterConfigError) as error:
        load_router_config(_config(tmp_path, text + "\n"))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_model_dir_fails_the_start_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(RouterConfigError, match=r"^predictor.model_dir: no predictor directory at "):
        load_length_predictor(PredictorConfig(model_dir=tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    config = _config(tmp_path, f"predictor: {{model_dir: {tmp_path / 'empty'}}}\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"predictor.model_dir: {tmp_path / 'empty'}: missing metadata.json" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_shaper_gives_the_predictor_the_prompt_text_and_the_tenant() -> None:
    shaper = RequestShaper()
    completion = GenerateInput("a", MODEL, 64, prompt="Write a poem", user="team-a")
    features = shaper.shape(completion, 0.0).features
    assert (features.prompt_text, features.tenant, features.user) == ("Write a poem", "team-a", "team-a")
    chat = GenerateInput(
        "b",
        MODEL,
        64,
        messages=(("system", "Be brief."), ("user", "First"), ("assistant", "ok"), ("user", "Then")),
    )
    features = shaper.shape(chat, 0.0).features
    assert features.prompt_text == "Then" and features.tenant is None
    assert shaper.shape(completion, 0.0, tenant="explicit").features.tenant == "explicit"


def test_metrics_without_a_model_show_the_running_average_only() -> None:
    text = RouterMetrics().render().decode()
    assert 'fleetroute_predictor_source{source="running_average"} 1.0' in text
    assert "fleetroute_predictor_kendall_tau" not in text


def test_metrics_follow_the_drift_state() -> None:
    state = DriftState(PredictionSource.BASELINE, 40, 0.05, 0.9, 0.7, switches=3)
    samples = _samples(RouterMetrics(predictor=lambda: state).render().decode())
    assert samples[("fleetroute_predictor_source", (("source", "model"),))] == 0.0
    assert samples[("fleetroute_predictor_source", (("source", "running_average"),))] == 1.0
    assert samples[("fleetroute_predictor_kendall_tau", ())] == 0.05
    assert samples[("fleetroute_predictor_log_error", (("source", "model"),))] == 0.9
    assert samples[("fleetroute_predictor_log_error", (("source", "running_average"),))] == 0.7
    assert samples[("fleetroute_predictor_switches_total", ())] == 3.0
    assert samples[("fleetroute_predictor_window_requests", ())] == 40.0


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def fleet(model_dir: Path) -> Iterator[FleetThread]:
    predictor: dict[str, Any] = {
        "model_dir": str(model_dir),
        "drift": {"window": 20, "min_samples": 4, "evaluate_every": 1},
    }
    with FleetThread(
        fleet_from_gpus(["h100-80gb", "a100-80gb"], None, MODEL), predictor=predictor
    ) as running:
        yield running


def _metrics(fleet: FleetThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async def get() -> str:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(fleet.url + "/metrics") as reply:
            return await reply.text()

    return _samples(fleet.run(get()))


def test_a_router_with_a_saved_model_routes_and_exports_predictor_metrics(fleet: FleetThread) -> None:
    client = fleet.client()
    for index in range(6):  # answers shorter than max_tokens: the sim agents end them early
        answer = client.completions.create(
            model=MODEL, prompt="word " * (2 + 3 * index), max_tokens=300, user=f"tenant-{index % 2}"
        )
        assert answer.usage is not None and answer.usage.completion_tokens >= 1
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert chat.choices[0].message.content
    samples = _metrics(fleet)
    sources = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "fleetroute_predictor_source"
    }
    assert sorted(sources) == ["model", "running_average"] and sum(sources.values()) == 1.0
    assert ("fleetroute_predictor_kendall_tau", ()) in samples
    assert samples[("fleetroute_predictor_window_requests", ())] == 7.0
    errors = [samples[("fleetroute_predictor_log_error", (("source", s),))] for s in sources]
    assert all(error > 0 for error in errors)
    assert ("fleetroute_predictor_switches_total", ()) in samples
    predictor = fleet.router.predictor
    assert isinstance(predictor, GuardedPredictor) and isinstance(predictor.model, OnlineCorrectedPredictor)
    assert predictor.model.factor(MODEL, "tenant-1") != 1.0  # finished requests corrected the model


def test_the_predicted_length_reaches_the_replica_engine(fleet: FleetThread) -> None:
    stream = fleet.client().completions.create(
        model=MODEL, prompt="word " * 50, max_tokens=3000, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))  # the request is running on a replica now

    def predicted() -> list[int | None]:
        return [
            seq.spec.predicted_output_tokens
            for agent in fleet.fleet.agents
            for seq in agent.backend.loop.engine.scheduler.running  # type: ignore[attr-defined]
        ]

    forwarded = fleet.call(predicted)
    stream.close()
    assert len(forwarded) == 1 and forwarded[0] is not None and 0 < forwarded[0] <= 3000
