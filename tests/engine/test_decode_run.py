"""Multi-step decode runs leave the engine exactly where single steps would (hypothesis).

Two identical engines get the same requests, aborts and snapshot calls at the same step
boundaries; one steps one plan at a time, the other uses decode runs whenever it can. Every
step's duration, every finished request and every snapshot must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from replica_agent.engine import Engine, EngineConfig, RequestSpec, SamplingParams
from replica_agent.engine.config import QueuePolicyName
from replica_agent.engine.decode_run import DecodeRun
from replica_agent.engine.step import StepPlan, StepResult
from replica_agent.executors.cost_executor import CostModelExecutor
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import get_gpu_profile, get_model_profile

COST = StepCostModel(get_gpu_profile("a100-80gb"), get_model_profile("llama-3.1-8b"))


@dataclass(frozen=True)
class Script:
    config: EngineConfig
    requests: tuple[RequestSpec, ...]
    # per step boundary: add the next request, snapshot, abort request number n
    actions: tuple[tuple[bool, bool, int | None], ...]


@st.composite
def scripts(draw: st.DrawFn, busy: bool = False) -> Script:
    """``busy``: long answers, plenty of blocks and seats, no aborts (requests join runs)."""
    block_size = draw(st.sampled_from([2, 4]))
    prefixes = [draw(st.lists(st.integers(0, 9), max_size=12)) for _ in range(2)]
    requests = []
    for i in range(draw(st.integers(1, 8))):
        prefix = prefixes[draw(st.integers(0, 1))]
        tail = draw(st.lists(st.integers(0, 9), min_size=1, max_size=10))
        stops = draw(st.sampled_from([(), (), (3,)]))
        params = SamplingParams(
            max_tokens=draw(st.integers(1, 40)), ignore_eos=busy or draw(st.booleans()), stop_token_ids=stops
        )
        priority, predicted = draw(st.integers(0, 2)), draw(st.none() | st.integers(1, 40))
        requests.append(RequestSpec(f"r{i}", tuple(prefix + tail), float(i), params, priority, predicted))
    largest = max(len(r.prompt_token_ids) + r.params.max_tokens for r in requests)
    blocks = -(-largest // block_size)
    config = EngineConfig(
        num_blocks=draw(st.integers(blocks * (4 if busy else 1), blocks * 8 if busy else blocks * 4)),
        block_size=block_size,
        max_num_seqs=draw(st.integers(4 if busy else 1, 8 if busy else 6)),
        max_num_batched_tokens=draw(st.integers(4, 40)),
        max_model_len=256,
        enable_prefix_caching=draw(st.booleans()),
        record_cache_events=True,
        queue_policy=draw(st.sampled_from(list(QueuePolicyName))),
        sjf_starvation_steps=draw(st.integers(1, 30)),
    )
    aborts = st.none() if busy else st.none() | st.integers(0, len(requests) - 1)
    action = st.tuples(st.booleans(), st.booleans(), aborts)
    return Script(config, tuple(requests), tuple(draw(st.lists(action, min_size=1, max_size=120))))


def _drive(script: Script, runs: bool) -> list[object]:
    engine = Engine(script.config)
    executor = CostModelExecutor(COST, vocab_size=10)
    log: list[object] = []
    now = 0.0
    plan: StepPlan | None = None
    result: StepResult | None = None
    run: DecodeRun | None = None
    duration = 0.0
    pending = list(script.requests)
    for boundary in range(400):
        if plan is not None and result is not None:
            log.append(engine.update(plan, result, now, notable_only=True))
        elif run is not None:
            log.append(engine.finish_decode_step(now, duration))
        plan = result = run = None
        run = engine.decode_run if runs else None
        if run is None and runs:
            run = engine.start_decode_run(executor.tokens_at)
        if run is not None:
            duration = COST.decode_batch_seconds(run.batch_size, run.context_tokens(), run.admitted)
        else:
            plan = engine.schedule(now)
            duration = 0.0
            if plan is not None:
                result = executor.execute(plan)
                duration = result.duration_s
        log.append(("step", boundary, duration))
        if boundary < len(script.actions):
            add, snap, abort = script.actions[boundary]
            if add and pending:
                engine.add(replace(pending.pop(0), arrival_time=now))
            if abort is not None:
                aborted = engine.abort(f"r{abort}")
                log.append(("abort", aborted))
            if snap:
                log.append(engine.snapshot(now))
        elif plan is None and run is None and not pending:
            break
        elif plan is None and run is None:
            engine.add(replace(pending.pop(0), arrival_time=now))
        now += duration if duration else 0.001
    log.append(engine.snapshot(now))
    log.append((engine.pool.num_free, engine.pool.num_cached, engine.scheduler.step))
    return log


@settings(max_examples=150, deadline=None)
@given(scripts())
def test_decode_runs_match_single_steps(script: Script) -> None:
    assert _drive(script, runs=True) == _drive(script, runs=False)


@settings(max_examples=100, deadline=None)
@given(scripts(busy=True))
def test_decode_runs_that_admit_requests_match_single_steps(script: Script) -> None:
    assert _drive(script, runs=True) == _drive(script, runs=False)


def test_a_request_added_during_a_run_rides_along_and_joins_it() -> None:
    engine = Engine(EngineConfig(num_blocks=64, block_size=4, max_model_len=256))
    executor = CostModelExecutor(COST, vocab_size=100)
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    engine.add(RequestSpec("r0", (1, 2, 3), 0.0, params))
    plan = engine.schedule(0.0)
    assert plan is not None
    engine.update(plan, executor.execute(plan), 1.0)
    run = engine.start_decode_run(executor.tokens_at)
    assert run is not None and run.batch_size == 1
    engine.add(RequestSpec("r1", (4, 5, 6, 7, 8), 1.5, params))
    first = engine.finish_decode_step(2.0, 1.0)  # r1's prompt rides along with step 2
    assert first == [] and [c.request_id for c in run.admitted] == ["r1"] and run.admitted[0].is_prefill
    second = engine.finish_decode_step(3.0, 1.0)
    assert [(o.request_id, o.num_output_tokens) for o in second] == [("r1", 1)]  # its first token
    assert engine.decode_run is run and run.batch_size == 2 and run.admitted == ()
    outputs = [o for s in range(4, 9) for o in engine.finish_decode_step(float(s), 1.0)]
    assert [(o.request_id, o.finished) for o in outputs] == [("r0", True), ("r1", True)]
    assert engine.decode_run is None and not engine.has_unfinished()


def test_a_decode_run_covers_the_steps_until_something_changes() -> None:
    engine = Engine(EngineConfig(num_blocks=64, block_size=4, max_model_len=256))
    executor = CostModelExecutor(COST, vocab_size=100)
    for i, length in enumerate((5, 9)):
        engine.add(
            RequestSpec(f"r{i}", (1, 2, 3, i), 0.0, SamplingParams(max_tokens=length, ignore_eos=True))
        )
    assert engine.start_decode_run(executor.tokens_at) is None  # prompts still to prefill
    plan = engine.schedule(0.0)
    assert plan is not None
    engine.update(plan, executor.execute(plan), 1.0)
    run = engine.start_decode_run(executor.tokens_at)
    assert run is not None and run.batch_size == 2
    finished = [engine.finish_decode_step(1.0 + s, 0.5) for s in range(1, 9)]
    assert [[o.request_id for o in f] for f in finished] == [[], [], [], ["r0"], [], [], [], ["r1"]]
    assert engine.decode_run is None and not engine.has_unfinished()


def test_tokens_at_is_token_at_over_a_range() -> None:
    executor = CostModelExecutor(COST, vocab_size=5, eos_token_id=2, seed=3)
    assert executor.tokens_at("req", 7, 40) == [executor.token_at("req", p) for p in range(7, 40)]
    assert 2 not in executor.tokens_at("req", 0, 200)


def test_notable_only_keeps_first_and_last_tokens() -> None:
    engine = Engine(EngineConfig(num_blocks=64, block_size=4, max_model_len=256))
    executor = CostModelExecutor(COST, vocab_size=100)
    engine.add(RequestSpec("r", (1, 2, 3), 0.0, SamplingParams(max_tokens=4, ignore_eos=True)))
    counts = []
    while (plan := engine.schedule(0.0)) is not None:
        outputs = engine.update(plan, executor.execute(plan), 1.0, notable_only=True)
        counts.append([(o.num_output_tokens, o.finished) for o in outputs])
    assert counts == [[(1, False)], [], [], [(4, True)]]
