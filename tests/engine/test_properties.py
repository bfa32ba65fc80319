"""Invariants of the block pool and scheduler under arbitrary workloads (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from replica_agent.engine import (
    BatchingMode,
    Engine,
    EngineConfig,
    QueuePolicyName,
    RequestSpec,
    SamplingParams,
    StepPlan,
    StepResult,
)


@dataclass(frozen=True)
class Workload:
    config: EngineConfig
    requests: tuple[RequestSpec, ...]
    arrival_steps: tuple[int, ...]
    abort_at: dict[int, str]


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    block_size = draw(st.sampled_from([2, 4, 8]))
    prefixes = [draw(st.lists(st.integers(1, 50), min_size=0, max_size=20)) for _ in range(3)]
    count = draw(st.integers(1, 10))
    requests = []
    for i in range(count):
        prefix = prefixes[draw(st.integers(0, 2))]
        tail = draw(st.lists(st.integers(1, 50), min_size=1, max_size=20))
        requests.append(
            RequestSpec(
                request_id=f"r{i}",
                prompt_token_ids=tuple(prefix + tail),
                arrival_time=float(i),
                params=SamplingParams(max_tokens=draw(st.integers(1, 16)), ignore_eos=True),
                priority=draw(st.integers(0, 3)),
                predicted_output_tokens=draw(st.none() | st.integers(1, 32)),
            )
        )
    largest = max(len(r.prompt_token_ids) + r.params.max_tokens for r in requests)
    min_blocks = -(-largest // block_size)
    config = EngineConfig(
        num_blocks=draw(st.integers(min_blocks, min_blocks * 3)),
        block_size=block_size,
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=draw(st.integers(1, 48)),
        max_model_len=256,
        queue_policy=draw(st.sampled_from(list(QueuePolicyName))),
        batching=draw(
            st.sampled_from([BatchingMode.CONTINUOUS, BatchingMode.CONTINUOUS, BatchingMode.STATIC])
        ),
        enable_prefix_caching=draw(st.booleans()),
        sjf_starvation_steps=draw(st.integers(1, 30)),
    )
    arrival_steps = tuple(sorted(draw(st.lists(st.integers(0, 30), min_size=count, max_size=count))))
    order = draw(st.permutations(requests))
    aborts = draw(st.dictionaries(st.integers(0, 60), st.sampled_from([r.request_id for r in requests])))
    return Workload(config, tuple(order), arrival_steps, aborts)


def check_pool(engine: Engine) -> None:
    pool = engine.pool
    assert all(b.ref_count >= 0 for b in pool.blocks)
    assert pool.num_used + pool.num_free == pool.num_blocks
    assert pool.num_used == sum(1 for b in pool.blocks if b.ref_count > 0)
    live = [*engine.scheduler.running, *engine.scheduler.waiting]
    held: dict[int, int] = {}
    for seq in live:
        for block_id in seq.block_ids:
            held[block_id] = held.get(block_id, 0) + 1
    assert held == {b.block_id: b.ref_count for b in pool.blocks if b.ref_count > 0}


def check_no_token_twice(plan: StepPlan, computed: dict[str, int], preempted: set[str]) -> None:
    for request_id in plan.preempted_ids:
        computed[request_id] = 0
        preempted.add(request_id)
    for chunk in plan.chunks:
        before = computed.get(chunk.request_id, 0)
        # a chunk starts where the last one stopped, or later after a prefix-cache hit from zero
        assert chunk.start == before or (before == 0 and chunk.start > 0)
        computed[chunk.request_id] = chunk.end


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_invariants_hold_and_every_request_finishes(workload: Workload) -> None:
    engine = Engine(workload.config)
    pending = list(zip(workload.arrival_steps, workload.requests, strict=True))
    computed: dict[str, int] = {}
    preempted: set[str] = set()
    finished: dict[str, str] = {}
    max_tokens = {r.request_id: r.params.max_tokens for r in workload.requests}
    step = 0
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            engine.add(pending.pop(0)[1])
        if step in workload.abort_at:
            output = engine.abort(workload.abort_at[step])
            if output is not None:
                finished[output.request_id] = "abort"
            check_pool(engine)
        plan = engine.schedule(float(step))
        step += 1
        assert step < 5_000, "engine did not make progress"
        if plan is None:
            assert not engine.has_unfinished() or pending
            continue
        check_no_token_twice(plan, computed, preempted)
        check_pool(engine)
        result = StepResult({c.request_id: 3 for c in plan.chunks if c.samples}, 0.01)
        for output in engine.update(plan, result, float(step)):
            if output.finished:
                assert output.request_id not in finished
                finished[output.request_id] = output.finish_reason or ""
                assert output.num_output_tokens == max_tokens[output.request_id]
        check_pool(engine)
    assert set(finished) == {r.request_id for r in workload.requests}
    assert engine.pool.num_used == 0
    assert all(reason in {"length", "abort"} for reason in finished.values())
