"""Small builders shared by the engine tests."""

from __future__ import annotations

from replica_agent.engine import Engine, EngineConfig, RequestSpec, SamplingParams, StepPlan, StepResult


def spec(
    request_id: str,
    prompt: list[int] | tuple[int, ...],
    max_tokens: int = 4,
    arrival: float = 0.0,
    priority: int = 0,
    predicted: int | None = None,
) -> RequestSpec:
    return RequestSpec(
        request_id=request_id,
        prompt_token_ids=tuple(prompt),
        arrival_time=arrival,
        params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        priority=priority,
        predicted_output_tokens=predicted,
    )


def constant_result(plan: StepPlan, token: int = 7, duration: float = 0.01) -> StepResult:
    return StepResult({c.request_id: token for c in plan.chunks if c.samples}, duration)


def small_engine(**overrides: object) -> Engine:
    settings: dict[str, object] = {
        "num_blocks": 32,
        "block_size": 4,
        "max_num_batched_tokens": 32,
        "max_model_len": 128,
        "max_num_seqs": 8,
    }
    settings.update(overrides)
    return Engine(EngineConfig.model_validate(settings))


def run_all(engine: Engine, max_steps: int = 10_000) -> list[StepPlan]:
    plans: list[StepPlan] = []
    now = 0.0
    while engine.has_unfinished():
        plan = engine.schedule(now)
        if plan is None:
            raise AssertionError("engine stalled with unfinished requests")
        plans.append(plan)
        now += 0.01
        engine.update(plan, constant_result(plan), now)
        if len(plans) > max_steps:
            raise AssertionError("engine did not finish")
    return plans
