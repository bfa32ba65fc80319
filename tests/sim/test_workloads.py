import numpy as np
import pytest

from router.sim.sources import load_trace, synthetic_shape
from router.sim.traces import TraceFormatError, TraceRequest
from router.sim.workloads import (
    PmfLengths,
    TraceLengths,
    gamma_workload,
    mean_rate_per_s,
    poisson_workload,
    retime,
)

LENGTHS = PmfLengths({100: 1.0, 300: 1.0}, {10: 3.0, 50: 1.0})


def _gaps(trace: list[TraceRequest]) -> np.ndarray:
    return np.diff([r.arrival_s for r in trace])


def test_poisson_arrivals_have_the_asked_rate_and_unit_cv() -> None:
    trace = poisson_workload(20.0, LENGTHS, count=4000, seed=3)
    gaps = _gaps(trace)
    assert trace[0].arrival_s == 0.0
    assert mean_rate_per_s(trace) == pytest.approx(20.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_arrivals_keep_the_rate_and_set_the_burstiness(shape: float) -> None:
    gaps = _gaps(gamma_workload(5.0, shape, LENGTHS, count=4000, seed=1))
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.08)
    assert gaps.std() / gaps.mean() == pytest.approx(shape**-0.5, rel=0.1)


def test_lengths_follow_the_distributions_and_the_seed() -> None:
    trace = poisson_workload(1.0, LENGTHS, count=2000, seed=9)
    prompts = [r.prompt_tokens for r in trace]
    outputs = [r.output_tokens for r in trace]
    assert set(prompts) == {100, 300} and set(outputs) == {10, 50}
    assert outputs.count(10) / len(outputs) == pytest.approx(0.75, abs=0.04)
    assert trace == poisson_workload(1.0, LENGTHS, count=2000, seed=9)
    assert trace != poisson_workload(1.0, LENGTHS, count=2000, seed=10)


def test_duration_bounds_the_arrivals() -> None:
    trace = poisson_workload(10.0, LENGTHS, duration_s=30.0, seed=0)
    assert all(r.arrival_s < 30.0 for r in trace)
    assert len(trace) == pytest.approx(300, rel=0.2)


def test_resampled_trace_lengths_keep_pairs_together() -> None:
    source = [TraceRequest(0.0, 7, 70), TraceRequest(1.0, 9, 90)]
    trace = poisson_workload(2.0, TraceLengths(source), count=200, seed=0)
    assert {(r.prompt_tokens, r.output_tokens) for r in trace} == {(7, 70), (9, 90)}


def test_bad_workload_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        gamma_workload(1.0, 1.0, LENGTHS)
    with pytest.raises(ValueError, match="at least 1"):
        gamma_workload(1.0, 1.0, LENGTHS, count=0)
    with pytest.raises(ValueError, match="positive"):
        gamma_workload(0.0, 1.0, LENGTHS, count=5)


def test_retime_divides_arrival_times() -> None:
    trace = [TraceRequest(0.0, 1, 1), TraceRequest(4.0, 1, 1)]
    assert [r.arrival_s for r in retime(trace, 2.0)] == [0.0, 2.0]
    with pytest.raises(ValueError):
        retime(trace, 0.0)


def test_synthetic_trace_names() -> None:
    assert synthetic_shape("poisson") == 1.0
    assert synthetic_shape("gamma:0.5") == 0.5
    assert synthetic_shape("azure2023_conv") is None
    with pytest.raises(TraceFormatError, match="positive"):
        synthetic_shape("gamma:-1")
    trace = load_trace("gamma:0.5", limit=50, seed=2)
    assert len(trace) == 50 and mean_rate_per_s(trace) > 0
    assert trace == load_trace("gamma:0.5", limit=50, seed=2)
