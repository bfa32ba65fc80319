"""The drift monitor: a model that turns to noise is switched off within the window, a good one
is kept, and hysteresis keeps a borderline model from flapping."""

from __future__ import annotations

import math
import random

import pytest

from predictors.drift import DriftMonitor, DriftSettings, PredictionSource


def _lengths(rng: random.Random, count: int) -> list[int]:
    return [max(1, round(rng.lognormvariate(math.log(200), 0.9))) for _ in range(count)]


def _feed(monitor: DriftMonitor, model: list[float], baseline: float, actual: list[int]) -> list[int]:
    """Record every request; the indices at which the source switched."""
    switches = []
    for index, (predicted, tokens) in enumerate(zip(model, actual, strict=True)):
        if monitor.record(predicted, baseline, tokens) is not None:
            switches.append(index)
    return switches


def test_a_good_model_stays_in_use() -> None:
    rng = random.Random(3)
    actual = _lengths(rng, 800)
    model = [tokens * rng.lognormvariate(0, 0.35) for tokens in actual]
    monitor = DriftMonitor(DriftSettings(window=200))
    assert _feed(monitor, model, 200.0, actual) == []
    state = monitor.state
    assert state.source is PredictionSource.MODEL and state.switches == 0 and state.samples == 200
    assert state.kendall_tau is not None and state.kendall_tau > 0.5
    assert state.model_error is not None and state.baseline_error is not None
    assert state.model_error < 0.5 * state.baseline_error


def test_a_model_that_turns_to_noise_is_switched_off_within_the_window() -> None:
    rng = random.Random(5)
    actual = _lengths(rng, 800)
    good = [tokens * rng.lognormvariate(0, 0.35) for tokens in actual[:400]]
    noise = [rng.lognormvariate(math.log(200), 0.9) for _ in actual[400:]]
    monitor = DriftMonitor(DriftSettings(window=200))
    switches = _feed(monitor, good + noise, 200.0, actual)
    assert len(switches) == 1 and 400 <= switches[0] < 600
    state = monitor.state
    assert state.source is PredictionSource.BASELINE and state.switches == 1
    assert state.kendall_tau is not None and abs(state.kendall_tau) < 0.15


def test_the_monitor_waits_for_min_samples_and_judges_every_few_records() -> None:
    monitor = DriftMonitor(DriftSettings(window=20, min_samples=10, evaluate_every=5))
    for _ in range(9):
        assert monitor.record(1.0, 100.0, 100) is None  # a useless model, but too few samples
    assert monitor.state.kendall_tau is None and monitor.state.source is PredictionSource.MODEL
    switch = monitor.record(1.0, 100.0, 100)
    assert switch is not None and switch.previous is PredictionSource.MODEL
    assert switch.state.source is PredictionSource.BASELINE and "Kendall tau" in switch.reason


def _off_by(tokens: int, error: float, rng: random.Random) -> float:
    """A prediction whose log1p is off by exactly ``error``, above or below at random."""
    return math.expm1(math.log1p(tokens) + (error if rng.random() < 0.5 else -error))


def test_hysteresis_keeps_a_borderline_model_from_flapping() -> None:
    # The baseline is off by 0.5 on every request. Bars: stay in use below 0.5 * 0.95 = 0.475,
    # come back below 0.5 * 0.90 = 0.45 (rank correlation is not judged here: floor -1).
    settings = DriftSettings(
        window=50, min_samples=50, evaluate_every=10, error_margin=0.05, hysteresis=0.05, tau_floor=-1.0
    )
    monitor = DriftMonitor(settings)
    rng = random.Random(7)
    switches = 0

    def run(model_error: float, count: int = 100) -> PredictionSource:
        nonlocal switches
        for _ in range(count):
            (tokens,) = _lengths(rng, 1)
            predicted, baseline = _off_by(tokens, model_error, rng), _off_by(tokens, 0.5, rng)
            if monitor.record(predicted, baseline, tokens) is not None:
                switches += 1
        return monitor.state.source

    assert run(0.5) is PredictionSource.BASELINE and switches == 1  # no better than the baseline
    assert run(0.46, 300) is PredictionSource.BASELINE and switches == 1  # 8% better: not enough to return
    assert run(0.4) is PredictionSource.MODEL and switches == 2  # 20% better: back in use
    assert run(0.46, 300) is PredictionSource.MODEL and switches == 2  # 8% better: enough to stay
    assert monitor.state.switches == 2
    assert monitor.state.model_error == pytest.approx(0.46)
    assert monitor.state.baseline_error == pytest.approx(0.5)


def test_measuring_only_never_switches() -> None:
    monitor = DriftMonitor(DriftSettings(window=10, min_samples=10, evaluate_every=1, switching=False))
    for _ in range(30):
        assert monitor.record(1.0, 100.0, 100) is None
    assert monitor.state.source is PredictionSource.MODEL and monitor.state.model_error is not None


@pytest.mark.parametrize(
    "settings",
    [
        {"window": 10, "min_samples": 20},
        {"min_samples": 1},
        {"evaluate_every": 0},
        {"error_margin": 1.0},
        {"tau_floor": 2.0},
        {"error_margin": 0.5, "hysteresis": 0.5},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DriftSettings(**settings)  # type: ignore[arg-type]


def test_negative_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        DriftMonitor().record(-1.0, 1.0, 1)
