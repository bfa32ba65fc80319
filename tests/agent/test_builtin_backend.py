"""The built-in engine behind the real-time loop, without any network in between."""

import asyncio

import pytest

from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig
from replica_agent.engine.step import StepPlan, StepResult
from replica_agent.factory import build_backend
from replica_agent.service.backend import (
    DrainingError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    close_stream,
)
from replica_agent.service.runners import StepRunner

MODEL = "llama-3.1-8b"


def make_backend(**settings) -> BuiltinBackend:
    instant = settings.pop("instant", True)
    backend = build_backend(
        AgentConfig(executor="sim", gpu="a100-80gb", model=MODEL, **settings), instant=instant
    )
    assert isinstance(backend, BuiltinBackend)
    return backend


def request(request_id: str, **fields) -> GenerateInput:
    fields.setdefault("prompt", "Explain continuous batching to a new engineer. " * 8)
    return GenerateInput(
        request_id=request_id,
        model=fields.pop("model", MODEL),
        max_tokens=fields.pop("max_tokens", 32),
        **fields,
    )


async def collect(backend: BuiltinBackend, req: GenerateInput) -> list[GenerateEvent]:
    return [event async for event in backend.generate(req)]


def run(body, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(body, timeout))


def test_concurrent_requests_stream_tokens_that_add_up_to_the_usage() -> None:
    async def body() -> None:
        backend = make_backend()
        await backend.start()
        try:
            results = await asyncio.gather(
                *(collect(backend, request(f"r{i}", max_tokens=40)) for i in range(12))
            )
        finally:
            await backend.stop(1.0)
        for events in results:
            final = events[-1]
            assert final.finished and final.finish_reason in ("stop", "length") and final.usage is not None
            assert sum(len(e.token_ids) for e in events) == final.usage.completion_tokens
            assert final.usage is not None and final.usage.prompt_tokens > 50
            assert "".join(e.text for e in events).strip()
            assert not any(e.finished for e in events[:-1])
        reasons = {events[-1].finish_reason for events in results}
        assert "stop" in reasons  # answers end on their own, drawn from the length distribution

    run(body())


def test_ignore_eos_runs_to_max_tokens_and_repeated_prompts_hit_the_prefix_cache() -> None:
    async def body() -> None:
        backend = make_backend()
        await backend.start()
        try:
            first = await collect(backend, request("a", max_tokens=50, ignore_eos=True))
            second = await collect(backend, request("b", max_tokens=50, ignore_eos=True))
        finally:
            await backend.stop(1.0)
        first_usage, second_usage = first[-1].usage, second[-1].usage
        assert first_usage is not None and second_usage is not None
        for events in (first, second):
            assert events[-1].finish_reason == "length"
        assert first_usage.completion_tokens == second_usage.completion_tokens == 50
        assert first_usage.cached_tokens == 0
        assert second_usage.cached_tokens >= 16 * (first_usage.prompt_tokens // 16 - 1)

    run(body())


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"model": "gpt-4"}, ModelNotFoundError, "not served"),
        ({"max_tokens": 0}, InvalidRequestError, "max_tokens"),
        ({"max_tokens": 10**7}, InvalidRequestError, "maximum context length"),
        ({"prompt": "word " * 20000}, InvalidRequestError, "maximum context length"),
        ({"prompt": ""}, InvalidRequestError, "empty"),
        ({"prompt": "x", "prompt_token_ids": (5, 6)}, InvalidRequestError, "exactly one"),
        ({"prompt": None, "prompt_token_ids": (5, 10**9)}, InvalidRequestError, "vocabulary"),
        ({"temperature": -1.0}, InvalidRequestError, "temperature"),
        ({"stop_token_ids": (-3,)}, InvalidRequestError, "stop token"),
    ],
)
def test_bad_requests_are_refused_before_the_engine_sees_them(fields, error, message) -> None:
    async def body() -> None:
        backend = make_backend()
        await backend.start()
        try:
            with pytest.raises(error, match=message):
                await collect(backend, request("bad", **fields))
            engine = backend.loop.engine
            assert engine.num_requests == 0 and engine.pool.num_free == engine.pool.num_blocks
            assert backend.latest_snapshot().admitted_ids == ()
        finally:
            await backend.stop(1.0)

    run(body())


def test_a_consumer_that_goes_away_aborts_its_request_and_frees_its_blocks() -> None:
    async def body() -> None:
        backend = make_backend(instant=False, speedup=0.5)
        await backend.start()
        engine = backend.loop.engine
        try:
            stream = backend.generate(request("gone", max_tokens=500, ignore_eos=True))
            await anext(stream)
            assert engine.pool.num_free < engine.pool.num_blocks
            watcher = backend.watch_snapshots()
            await anext(watcher)
            await close_stream(stream)
            assert engine.num_requests == 0 and engine.pool.num_free == engine.pool.num_blocks
            next_snapshot = await asyncio.wait_for(anext(watcher), 1.0)
            assert next_snapshot.free_blocks == engine.pool.num_blocks
        finally:
            await backend.stop(1.0)

    run(body())


def test_a_consumer_that_stops_reading_is_cut_off_at_the_buffer_bound() -> None:
    async def body() -> None:
        backend = make_backend(max_buffered_tokens=8)
        await backend.start()
        try:
            stream = backend.generate(request("stuck", max_tokens=400, ignore_eos=True))
            first = await anext(stream)
            await asyncio.sleep(0.2)  # the loop keeps stepping; this consumer reads nothing
            rest = [event async for event in stream]
        finally:
            await backend.stop(1.0)
        assert rest[-1].finish_reason == "abort"
        assert len(first.token_ids) + sum(len(e.token_ids) for e in rest) < 400

    run(body())


class FailingOnce:
    def __init__(self, inner: StepRunner) -> None:
        self.inner, self.failed = inner, False

    async def run(self, plan: StepPlan) -> StepResult:
        if not self.failed:
            self.failed = True
            raise RuntimeError("device lost")
        return await self.inner.run(plan)

    def release(self, request_id: str) -> None:
        self.inner.release(request_id)

    def close(self) -> None:
        self.inner.close()


def test_an_executor_failure_aborts_that_steps_requests_and_the_loop_serves_on() -> None:
    async def body() -> None:
        backend = make_backend()
        backend.loop.runner = FailingOnce(backend.loop.runner)
        await backend.start()
        try:
            failed = await collect(backend, request("unlucky"))
            later = await collect(backend, request("lucky"))
        finally:
            await backend.stop(1.0)
        assert failed[-1].finish_reason == "abort"
        assert later[-1].finish_reason in ("stop", "length")
        assert backend.loop.engine.pool.num_free == backend.loop.engine.pool.num_blocks

    run(body())


def test_drain_refuses_new_work_finishes_or_aborts_old_work() -> None:
    async def body() -> None:
        backend = make_backend(instant=False, speedup=0.2)
        await backend.start()
        long = asyncio.create_task(collect(backend, request("long", max_tokens=2000, ignore_eos=True)))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(backend.stop(0.2))
        await asyncio.sleep(0.05)
        assert backend.draining and backend.latest_snapshot().draining
        with pytest.raises(DrainingError):
            await collect(backend, request("late"))
        await stopping
        events = await long
        assert events[-1].finish_reason == "abort"

    run(body())


def test_the_torch_executor_serves_through_the_same_loop() -> None:
    async def body() -> None:
        config = AgentConfig(executor="torch", gpu="cpu", model="tiny-llama", torch={"num_blocks": 64})
        backend = build_backend(config)
        assert isinstance(backend, BuiltinBackend)
        await backend.start()
        try:
            results = await asyncio.gather(
                *(collect(backend, request(f"t{i}", model="tiny-llama", max_tokens=12)) for i in range(3))
            )
        finally:
            await backend.stop(1.0)
        for events in results:
            final = events[-1]
            assert final.finished and final.usage is not None
            assert sum(len(e.token_ids) for e in events) == final.usage.completion_tokens
            assert all(0 <= t < 512 for e in events for t in e.token_ids)
        assert backend.info.executor == "torch" and backend.info.num_blocks == 64
        assert backend.loop.engine.pool.num_free == 64

    run(body())
