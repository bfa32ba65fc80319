"""Replay of the vLLM end-to-end benchmarks through the real engine and the cost-model executor.

A closed-loop client (``benchmark_serving --max-concurrency C``): C requests are sent at t=0 and
each client sends its next one the moment its previous one finishes. The engine steps in virtual
time (``schedule(now)`` -> ``execute`` -> ``now += duration`` -> ``update``); metrics are computed
the way ``benchmark_serving`` does: TTFT = first token - send, TPOT = (e2e - TTFT) / (output - 1),
output throughput = output tokens / benchmark duration; TTFT and TPOT are medians over requests.

The cost model's ``request_overhead_s`` (the serving front end's fixed latency per request) is not
part of any engine step: this driver adds it, as a delay between a request's send time and its
arrival at the engine, so it lands in TTFT and end-to-end latency (and, in a closed loop, in the
gap between a client's requests), exactly as a simulator should.

``host_seq_s`` is a diagnostic only (not shipped): a host cost per sequence per step that runs
overlapped with the GPU (step time = max(GPU time, host_seq_s x sequences)), used to show that the
host-bound yobitel points are explained by a front end capped at 1 / host_seq_s tokens/s.
"""

from __future__ import annotations

import heapq
import random
import statistics

from benchmarks.calibration_data import Scenario
from replica_agent.engine import RequestSpec, SamplingParams
from replica_agent.executors.cost_executor import CostModelExecutor
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.sim_replica import build_sim_replica


def run_scenario(
    gpu: str,
    model: str,
    scenario: Scenario,
    host_seq_s: float = 0.0,
    request_overhead_s: float | None = None,
    cost: StepCostModel | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Modelled median ``ttft_ms``, median ``tpot_ms`` and ``output_tok_s`` of ``scenario``.

    The per-request front-end delay is ``request_overhead_s`` if given, else the scenario's own (an
    older serving stack), else the cost model's ``request_overhead_s``. ``cost`` replaces the
    shipped cost model (the calibration passes refitted ones); the engine is the same."""
    s = scenario
    replica = build_sim_replica(
        gpu,
        model,
        seed=seed,
        max_num_batched_tokens=s.max_num_batched_tokens,
        enable_chunked_prefill=s.enable_chunked_prefill,
        max_model_len=s.max_model_len,
    )
    engine, executor = replica.engine, replica.executor
    if cost is not None:
        executor = CostModelExecutor(cost, cost.model.vocab_size, engine.config.eos_token_id, seed)
    cost = executor.cost_model
    overhead = request_overhead_s
    if overhead is None:
        overhead = s.request_overhead_s
    if overhead is None:
        overhead = cost.request_overhead_s
    vocab = cost.model.vocab_size
    rng = random.Random(seed)
    lengths = request_lengths(s, rng)
    arrivals: list[tuple[float, int]] = []  # (time the engine sees it, request index)
    sent: dict[str, float] = {}
    first: dict[str, float] = {}
    ttft: list[float] = []
    tpot: list[float] = []
    next_index = 0

    def send(now: float) -> None:
        nonlocal next_index
        if next_index < s.num_requests:
            sent[f"r{next_index}"] = now
            heapq.heappush(arrivals, (now + overhead, next_index))
            next_index += 1

    for _ in range(s.concurrency):
        send(0.0)
    now = end = 0.0
    while arrivals or engine.has_unfinished():
        while arrivals and arrivals[0][0] <= now:
            at, index = heapq.heappop(arrivals)
            prompt, max_tokens = lengths[index]
            engine.add(
                RequestSpec(
                    f"r{index}",
                    tuple(rng.randrange(vocab) for _ in range(prompt)),
                    arrival_time=at,
                    params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                )
            )
        plan = engine.schedule(now)
        if plan is None:
            if not arrivals:
                raise RuntimeError("engine has unfinished requests but schedules nothing")
            now = max(now, arrivals[0][0])
            continue
        result = executor.execute(plan)
        now += max(result.duration_s, host_seq_s * len(plan.chunks))
        for output in engine.update(plan, result, now):
            rid = output.request_id
            if output.num_output_tokens == 1:
                first[rid] = now
            if output.finished:
                latency = now - sent[rid]
                ttft.append(first[rid] - sent[rid])
                if output.num_output_tokens > 1:
                    tpot.append((latency - ttft[-1]) / (output.num_output_tokens - 1))
                end = now
                send(now)
    return {
        "ttft_ms": statistics.median(ttft) * 1e3,
        "tpot_ms": statistics.median(tpot) * 1e3,
        "output_tok_s": sum(output for _, output in lengths) / end,
    }


def request_lengths(s: Scenario, rng: random.Random) -> list[tuple[int, int]]:
    """(prompt, output) tokens of every request of ``s``."""
    out: list[tuple[int, int]] = []
    for index in range(s.num_requests):
        prompt, output = s.prompt_tokens[index % len(s.prompt_tokens)], s.output_tokens
        if s.length_spread > 0:
            prompt = round(prompt * rng.uniform(1 - s.length_spread, 1 + s.length_spread))
            output = round(output * rng.uniform(1 - s.length_spread, 1 + s.length_spread))
        out.append((max(prompt, 1), max(output, 2)))
    return out
