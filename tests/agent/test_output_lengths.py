import pytest

from replica_agent.engine.step import ScheduledChunk, StepPlan
from replica_agent.executors.cost_executor import CostModelExecutor
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import get_gpu_profile, get_model_profile
from replica_agent.executors.output_lengths import (
    DEFAULT_OUTPUT_LENGTHS,
    LengthScriptedExecutor,
    OutputLengthDistribution,
)


@pytest.mark.parametrize(
    "spec",
    ["gamma:1,2", "fixed", "fixed:0", "uniform:10,5", "lognormal:median=x,sigma=1", "lognormal:100,-1"],
)
def test_bad_specs_are_refused_with_a_message(spec: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        OutputLengthDistribution.parse(spec)


def test_draws_are_deterministic_per_request_and_follow_the_distribution() -> None:
    dist = OutputLengthDistribution.parse(DEFAULT_OUTPUT_LENGTHS, seed=3)
    draws = [dist.sample(f"req-{i}") for i in range(4000)]
    assert draws == [dist.sample(f"req-{i}") for i in range(4000)]
    draws.sort()
    assert 130 <= draws[len(draws) // 2] <= 175  # median 151
    assert OutputLengthDistribution.parse("fixed:42").sample("x") == 42
    uniform = OutputLengthDistribution.parse("uniform:5,8")
    assert {uniform.sample(str(i)) for i in range(200)} == {5, 6, 7, 8}


def decode(request_id: str, end: int) -> ScheduledChunk:
    """A decode chunk whose sampled token lands at sequence position ``end``."""
    return ScheduledChunk(request_id, end - 1, (7,), (0,), is_prefill=False, samples=True)


def test_eos_is_sampled_exactly_at_the_natural_length() -> None:
    cost = StepCostModel(get_gpu_profile("a100-80gb"), get_model_profile("llama-3.1-8b"))
    inner = CostModelExecutor(cost, vocab_size=1000, eos_token_id=2)
    script = LengthScriptedExecutor(inner, OutputLengthDistribution.parse("fixed:3"), eos_token_id=2)
    assert script.expect("a", prompt_tokens=10, max_tokens=100, ignore_eos=False) == 3
    assert script.expect("b", prompt_tokens=10, max_tokens=100, ignore_eos=True) is None
    assert script.expect("c", prompt_tokens=10, max_tokens=3, ignore_eos=False) is None  # max_tokens decides
    outputs = []
    for end in (10, 11, 12):  # with a 10-token prompt these sample outputs 1, 2 and 3
        plan = StepPlan(end, tuple(decode(r, end) for r in "abc"))
        outputs.append(script.execute(plan).sampled_token_ids)
    assert outputs[0]["a"] != 2 and outputs[1]["a"] != 2 and outputs[2]["a"] == 2
    assert all(o["b"] != 2 and o["c"] != 2 for o in outputs)
    script.release("a")
    assert script.execute(StepPlan(9, (decode("a", 12),))).sampled_token_ids["a"] != 2
