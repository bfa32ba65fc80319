import pytest

from replica_agent.engine import Engine, EngineConfig, RequestSpec, SamplingParams
from tests.engine.helpers import constant_result, run_all, small_engine, spec


def test_chunked_prefill_then_decode_under_token_budget() -> None:
    engine = small_engine(max_num_batched_tokens=8)
    engine.add(spec("a", list(range(20)), max_tokens=2))
    plans = run_all(engine)
    shapes = [[(c.start, c.num_tokens, c.samples, c.is_prefill) for c in p.chunks] for p in plans]
    assert shapes == [
        [(0, 8, False, True)],
        [(8, 8, False, True)],
        [(16, 4, True, True)],
        [(20, 1, True, False)],
    ]


def test_decodes_are_served_before_new_prefills() -> None:
    engine = small_engine(max_num_batched_tokens=10)
    engine.add(spec("a", list(range(5)), max_tokens=3))
    plan = engine.schedule(0.0)
    assert plan is not None
    engine.update(plan, constant_result(plan), 0.01)
    engine.add(spec("b", list(range(100, 120)), max_tokens=3))
    plan = engine.schedule(0.01)
    assert plan is not None
    assert [(c.request_id, c.num_tokens) for c in plan.chunks] == [("a", 1), ("b", 9)]


def test_max_num_seqs_bounds_the_batch() -> None:
    engine = small_engine(max_num_seqs=2)
    for i in range(4):
        engine.add(spec(f"r{i}", [i, 1, 2], max_tokens=3))
    plan = engine.schedule(0.0)
    assert plan is not None
    assert {c.request_id for c in plan.chunks} == {"r0", "r1"}


def test_prefix_cache_hit_never_covers_the_whole_prompt() -> None:
    engine = small_engine()
    prompt = list(range(12))  # exactly three blocks of four
    engine.add(spec("a", prompt, max_tokens=1))
    run_all(engine)
    engine.add(spec("b", prompt, max_tokens=1))
    plan = engine.schedule(1.0)
    assert plan is not None
    [chunk] = plan.chunks
    assert (chunk.start, chunk.num_tokens) == (8, 4)
    [output] = engine.update(plan, constant_result(plan), 1.01)
    assert output.num_cached_tokens == 8


def test_fcfs_preempts_the_latest_arrival_and_recomputes_it() -> None:
    # 6 blocks of 4 tokens: two 8-token prompts growing to 20 tokens cannot both fit.
    engine = small_engine(num_blocks=6)
    engine.add(spec("old", list(range(8)), max_tokens=12, arrival=0.0))
    engine.add(spec("new", list(range(50, 58)), max_tokens=12, arrival=0.5))
    plans = run_all(engine)
    preempted = [pid for p in plans for pid in p.preempted_ids]
    assert preempted and set(preempted) == {"new"}
    assert engine.scheduler.num_preemptions == len(preempted)
    assert engine.pool.num_used == 0


def test_priority_preempts_the_least_important_request() -> None:
    engine = small_engine(num_blocks=6, queue_policy="priority")
    engine.add(spec("background", list(range(8)), max_tokens=12, priority=5))
    engine.add(spec("urgent", list(range(50, 58)), max_tokens=12, arrival=0.5, priority=0))
    plans = run_all(engine)
    preempted = {pid for p in plans for pid in p.preempted_ids}
    assert preempted == {"background"}


def test_memory_aware_admission_avoids_preemption() -> None:
    def preemptions(policy: str) -> int:
        engine = small_engine(num_blocks=12, queue_policy=policy, max_num_batched_tokens=64)
        for i in range(4):
            engine.add(spec(f"r{i}", list(range(i * 100, i * 100 + 8)), max_tokens=12, predicted=12))
        run_all(engine)
        return engine.scheduler.num_preemptions

    assert preemptions("fcfs") > 0
    assert preemptions("memory_aware") == 0


def test_predicted_sjf_admits_the_shortest_predicted_first() -> None:
    engine = small_engine(queue_policy="predicted_sjf", max_num_seqs=1)
    engine.add(spec("long", [1, 2, 3], max_tokens=2, predicted=500, arrival=0.0))
    engine.add(spec("short", [4, 5, 6], max_tokens=2, predicted=5, arrival=0.1))
    plan = engine.schedule(0.2)
    assert plan is not None
    assert [c.request_id for c in plan.chunks] == ["short"]


def test_predicted_sjf_promotes_a_starving_request() -> None:
    engine = small_engine(
        queue_policy="predicted_sjf", max_num_seqs=1, sjf_starvation_steps=5, sjf_promotion_steps=2
    )
    engine.add(spec("long", [1, 2, 3], max_tokens=2, predicted=500))
    order: list[str] = []
    now = 0.0
    for i in range(12):
        engine.add(spec(f"short{i}", [4, 5, i], max_tokens=2, predicted=1, arrival=now))
        plan = engine.schedule(now)
        assert plan is not None
        order.extend(c.request_id for c in plan.chunks if c.start == 0)
        now += 0.01
        engine.update(plan, constant_result(plan), now)
    assert "long" in order
    assert order.index("long") <= 6


def test_static_batching_admits_nothing_while_a_batch_runs() -> None:
    engine = small_engine(batching="static", max_num_batched_tokens=64)
    engine.add(spec("a", [1, 2, 3], max_tokens=5))
    engine.add(spec("b", [4, 5, 6], max_tokens=1))
    plan = engine.schedule(0.0)
    assert plan is not None
    engine.update(plan, constant_result(plan), 0.01)
    engine.add(spec("c", [7, 8, 9], max_tokens=1))
    for step in range(4):
        plan = engine.schedule(0.01 * step)
        assert plan is not None
        assert [c.request_id for c in plan.chunks] == ["a"]
        engine.update(plan, constant_result(plan), 0.01 * step)
    plan = engine.schedule(1.0)
    assert plan is not None
    assert [c.request_id for c in plan.chunks] == ["c"]


def test_abort_frees_blocks_and_ignores_the_step_in_flight() -> None:
    engine = small_engine()
    engine.add(spec("a", list(range(10)), max_tokens=8))
    plan = engine.schedule(0.0)
    assert plan is not None
    assert engine.pool.num_used == 3
    output = engine.abort("a")
    assert output is not None and output.finish_reason == "abort"
    assert engine.pool.num_used == 0
    assert engine.update(plan, constant_result(plan), 0.01) == []
    assert engine.abort("a") is None
    assert not engine.has_unfinished()


def test_eos_stops_unless_ignored() -> None:
    engine = Engine(EngineConfig(num_blocks=8, block_size=4, max_model_len=64, eos_token_id=7))
    engine.add(RequestSpec("stop", (1, 2), 0.0, SamplingParams(max_tokens=5)))
    engine.add(RequestSpec("go", (3, 4), 0.0, SamplingParams(max_tokens=3, ignore_eos=True)))
    plan = engine.schedule(0.0)
    assert plan is not None
    outputs = {o.request_id: o for o in engine.update(plan, constant_result(plan, token=7), 0.1)}
    assert outputs["stop"].finish_reason == "stop"
    assert not outputs["go"].finished


def test_generation_stops_at_max_model_len() -> None:
    engine = small_engine(max_model_len=10)
    engine.add(spec("a", list(range(8)), max_tokens=50))
    run_all(engine)
    # finished with 2 output tokens: 8 + 2 = max_model_len
    assert engine.pool.num_used == 0


@pytest.mark.parametrize(
    ("prompt_len", "message"),
    [(128, "max_model_len"), (200, "max_model_len")],
)
def test_prompts_that_cannot_run_are_rejected(prompt_len: int, message: str) -> None:
    engine = small_engine()
    with pytest.raises(ValueError, match=message):
        engine.add(spec("a", list(range(prompt_len))))
    assert not engine.has_unfinished()


def test_prompt_larger_than_the_pool_is_rejected() -> None:
    engine = small_engine(num_blocks=2, max_model_len=64)
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add(spec("a", list(range(9))))


def test_duplicate_ids_are_rejected() -> None:
    engine = small_engine()
    engine.add(spec("a", [1]))
    with pytest.raises(ValueError, match="already"):
        engine.add(spec("a", [2]))


def test_schedule_refuses_a_second_plan_in_flight() -> None:
    engine = small_engine()
    engine.add(spec("a", [1, 2]))
    assert engine.schedule(0.0) is not None
    with pytest.raises(RuntimeError, match="in flight"):
        engine.schedule(0.0)


def test_snapshot_reports_queue_cache_and_admissions() -> None:
    engine = small_engine(max_num_batched_tokens=8, max_num_seqs=1)
    engine.add(spec("a", list(range(12)), max_tokens=2))
    engine.add(spec("b", list(range(100, 106)), max_tokens=2))
    snap = engine.snapshot(0.0)
    assert (snap.num_running, snap.num_waiting, snap.waiting_prefill_tokens) == (0, 2, 18)
    plan = engine.schedule(0.0)
    assert plan is not None
    engine.update(plan, constant_result(plan, duration=0.5), 0.5)
    snap = engine.snapshot(0.5)
    assert snap.admitted_ids == ("a",)
    assert (snap.num_running, snap.num_waiting) == (1, 1)
    assert snap.waiting_prefill_tokens == 4 + 6
    assert snap.running_context_tokens == 8
    assert snap.used_blocks == 2 and snap.total_blocks == 32  # blocks follow the chunk
    assert snap.prefill_tokens_per_s == pytest.approx(16.0)
    later = engine.snapshot(0.6)
    assert later.admitted_ids == ()
    assert later.seq == snap.seq + 1


def test_predicted_sjf_preempts_the_longest_predicted_request() -> None:
    engine = small_engine(num_blocks=6, queue_policy="predicted_sjf")
    engine.add(spec("long", list(range(8)), max_tokens=12, predicted=12, arrival=0.0))
    engine.add(spec("short", list(range(50, 58)), max_tokens=12, predicted=2, arrival=0.5))
    plans = run_all(engine)
    assert {pid for p in plans for pid in p.preempted_ids} == {"long"}
