"""Drive one engine through a list of arrivals in virtual time (benchmarks, calibration, tests).

The clock advances by each step's executor-reported duration, and jumps to the next arrival when
the engine is idle. The multi-replica simulator builds on the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from replica_agent.engine.engine import Engine
from replica_agent.engine.request import RequestSpec
from replica_agent.engine.step import StepPlan, StepResult


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    arrival_time: float
    first_token_time: float
    finish_time: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    preemptions: int
    finish_reason: str

    @property
    def ttft(self) -> float:
        return self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float:
        return self.finish_time - self.arrival_time

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (0 for single-token answers)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish_time - self.first_token_time) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    records: tuple[RequestRecord, ...]
    steps: int
    makespan_s: float
    preemptions: int

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records)

    @property
    def throughput_tok_s(self) -> float:
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """Latency percentiles and means (seconds), throughput, preemptions and cache hits."""
        records = self.records
        ttft = [r.ttft for r in records]
        e2e = [r.e2e for r in records]
        tpot = [r.tpot for r in records if r.output_tokens > 1]
        prompt = sum(r.prompt_tokens for r in records)
        return {
            "requests": float(len(records)),
            "throughput_tok_s": self.throughput_tok_s,
            "makespan_s": self.makespan_s,
            "ttft_p50_s": _percentile(ttft, 50),
            "ttft_p99_s": _percentile(ttft, 99),
            "ttft_mean_s": _mean(ttft),
            "e2e_p50_s": _percentile(e2e, 50),
            "e2e_p99_s": _percentile(e2e, 99),
            "e2e_mean_s": _mean(e2e),
            "tpot_p50_s": _percentile(tpot, 50),
            "preemptions": float(self.preemptions),
            "cached_prompt_frac": sum(r.cached_tokens for r in records) / prompt if prompt else 0.0,
            "steps": float(self.steps),
        }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


Execute = Callable[[StepPlan], StepResult]
StepHook = Callable[[Engine, StepPlan, float], None]


def replay(
    engine: Engine,
    execute: Execute,
    arrivals: Iterable[RequestSpec],
    on_step: StepHook | None = None,
    max_steps: int = 10_000_000,
) -> ReplayResult:
    """Run every arrival (in arrival order; consumed lazily) to completion. ``on_step`` sees the
    engine after each step's update."""
    upcoming = iter(arrivals)
    following = next(upcoming, None)
    if following is None:
        return ReplayResult((), 0, 0.0, 0)
    arrival_times: dict[str, float] = {}
    start = now = following.arrival_time
    steps = 0
    records: list[RequestRecord] = []
    while following is not None or engine.has_unfinished():
        while following is not None and following.arrival_time <= now:
            engine.add(following)
            arrival_times[following.request_id] = following.arrival_time
            upcoming_spec = next(upcoming, None)
            if upcoming_spec is not None and upcoming_spec.arrival_time < following.arrival_time:
                raise ValueError(f"arrivals out of order at {upcoming_spec.request_id!r}")
            following = upcoming_spec
        plan = engine.schedule(now)
        if plan is None:
            if following is None:
                raise RuntimeError("engine has unfinished requests but schedules nothing")
            now = max(now, following.arrival_time)
            continue
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"replay exceeded {max_steps} steps")
        result = execute(plan)
        seqs = {c.request_id: engine.get(c.request_id) for c in plan.chunks}
        now += result.duration_s
        for output in engine.update(plan, result, now):
            seq = seqs[output.request_id]
            if output.finished and seq is not None and seq.first_token_time is not None:
                records.append(
                    RequestRecord(
                        request_id=output.request_id,
                        arrival_time=arrival_times.pop(output.request_id),
                        first_token_time=seq.first_token_time,
                        finish_time=now,
                        prompt_tokens=output.num_prompt_tokens,
                        cached_tokens=output.num_cached_tokens,
                        output_tokens=output.num_output_tokens,
                        preemptions=seq.num_preemptions,
                        finish_reason=output.finish_reason or "",
                    )
                )
        if on_step is not None:
            on_step(engine, plan, now)
    return ReplayResult(tuple(records), steps, now - start, engine.scheduler.num_preemptions)
