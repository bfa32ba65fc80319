"""The cost-model GPU executor: timed steps, deterministic tokens, no EOS."""

from __future__ import annotations

import pytest

from replica_agent.engine.step import ScheduledChunk, StepPlan
from replica_agent.executors.base import Executor
from replica_agent.executors.cost_executor import CostModelExecutor
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import get_gpu_profile, get_model_profile

COST = StepCostModel(get_gpu_profile("a100-80gb"), get_model_profile("llama-3.1-8b"))


def chunk(request_id: str, start: int, length: int, samples: bool = True) -> ScheduledChunk:
    return ScheduledChunk(
        request_id=request_id,
        start=start,
        token_ids=tuple(range(length)),
        block_ids=(0,),
        is_prefill=length > 1,
        samples=samples,
    )


PLAN = StepPlan(
    step_id=3,
    chunks=(chunk("a", 0, 100), chunk("b", 40, 1), chunk("c", 0, 64, samples=False)),
)


def test_execute_samples_only_sampling_chunks_and_times_the_step() -> None:
    executor: Executor = CostModelExecutor(COST, vocab_size=1000)
    result = executor.execute(PLAN)
    assert set(result.sampled_token_ids) == {"a", "b"}
    assert all(0 <= t < 1000 for t in result.sampled_token_ids.values())
    assert result.duration_s == COST.step_seconds(PLAN.shape())
    assert result.duration_s > 0


def test_tokens_are_deterministic_per_seed_request_and_position() -> None:
    one = CostModelExecutor(COST, vocab_size=128256, seed=7)
    two = CostModelExecutor(COST, vocab_size=128256, seed=7)
    other = CostModelExecutor(COST, vocab_size=128256, seed=8)
    assert one.execute(PLAN).sampled_token_ids == two.execute(PLAN).sampled_token_ids
    tokens = [one.token_at("req", p) for p in range(50)]
    assert tokens == [two.token_at("req", p) for p in range(50)]
    assert tokens != [other.token_at("req", p) for p in range(50)]
    assert len(set(tokens)) > 40  # spread over the vocabulary
    # The token depends on the position it lands at, not on how the request was chunked.
    assert one.execute(PLAN).sampled_token_ids["a"] == one.token_at("a", 100)


def test_eos_is_never_sampled() -> None:
    executor = CostModelExecutor(COST, vocab_size=3, eos_token_id=1)
    tokens = {executor.token_at(f"r{i}", p) for i in range(20) for p in range(20)}
    assert tokens == {0, 2}
    assert CostModelExecutor(COST, vocab_size=2, eos_token_id=0).token_at("x", 5) == 1


def test_release_is_a_no_op() -> None:
    executor = CostModelExecutor(COST, vocab_size=100)
    before = executor.execute(PLAN)
    executor.release("a")
    executor.release("never-seen")
    assert executor.execute(PLAN) == before


def test_empty_plan() -> None:
    result = CostModelExecutor(COST, vocab_size=10).execute(StepPlan(step_id=0, chunks=()))
    assert result.sampled_token_ids == {}
    assert result.duration_s == 0.0


@pytest.mark.parametrize(
    ("vocab", "eos", "seed"),
    [(0, None, 0), (1, 0, 0), (10, 10, 0), (10, -1, 0), (10, None, -1), (10, None, 2**64)],
)
def test_invalid_settings(vocab: int, eos: int | None, seed: int) -> None:
    with pytest.raises(ValueError):
        CostModelExecutor(COST, vocab_size=vocab, eos_token_id=eos, seed=seed)
