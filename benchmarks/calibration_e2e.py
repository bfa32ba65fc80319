"""Closed-form serving model used to compare the cost model with vLLM end-to-end numbers.

Two scenarios (assumptions documented in benchmarks/results/calibration.md):

- ``burst``: C requests reach an idle server at once. Their prompts are packed into steps of at most
  ``chunk_budget`` tokens; TTFT is the median over requests of the end of the step that finishes
  the prompt. TPOT is a decode step of batch C at the mean context ``P + O/2``.
- ``closed_loop``: C streams, each sending its next request when the last one ends, so arrivals are
  staggered. A new prompt waits for the running decode step to end plus the step already scheduled
  (vLLM's async scheduling: 1.5 decode steps on average, none at C=1), then prefills in steps
  shared with the C-1 running decodes. During its O-1 decode steps, the other C-1 streams' prefills
  land in its batch; TPOT averages those mixed steps with pure decode steps. Output throughput is
  C · O / (TTFT + (O-1) · TPOT).

The lead may later replace this with a run of the real engine over the same scenarios.
"""

from __future__ import annotations

import math
import statistics

from benchmarks.calibration_data import Scenario
from replica_agent.engine.step import BatchShape, SeqShape
from replica_agent.executors.cost_model import StepCostModel

ASYNC_SCHEDULING_WAIT_STEPS = 1.5


def e2e_model(cost: StepCostModel, scenario: Scenario) -> dict[str, float]:
    """Modelled ``ttft_ms``, ``tpot_ms`` and ``output_tok_s`` for ``scenario``."""
    if scenario.kind == "burst":
        return _burst(cost, scenario)
    return _closed_loop(cost, scenario)


def _burst(cost: StepCostModel, s: Scenario) -> dict[str, float]:
    remaining = [s.prompt_tokens] * s.concurrency
    done_at: list[float] = []
    clock = 0.0
    while remaining:
        budget, seqs, finished = s.chunk_budget, [], 0
        for i, left in enumerate(remaining):
            take = min(left, budget)
            if take == 0:
                break
            seqs.append(SeqShape(take, s.prompt_tokens - left))
            remaining[i] -= take
            budget -= take
            finished += remaining[i] == 0
        clock += cost.step_seconds(BatchShape(tuple(seqs)))
        done_at += [clock] * finished
        remaining = [left for left in remaining if left > 0]
    tpot = cost.decode_step_seconds(s.concurrency, s.prompt_tokens + s.output_tokens / 2)
    ttft = statistics.median(done_at)
    return {"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "output_tok_s": s.concurrency / tpot}


def _closed_loop(cost: StepCostModel, s: Scenario) -> dict[str, float]:
    c, p, o = s.concurrency, s.prompt_tokens, s.output_tokens
    context = p + o // 2
    chunks = math.ceil(p / s.chunk_budget)
    chunk = min(p, s.chunk_budget)
    others = (SeqShape(1, context),) * (c - 1)
    mixed = cost.step_seconds(BatchShape((SeqShape(chunk, 0), *others)))
    decode = cost.decode_step_seconds(c, context)
    wait = ASYNC_SCHEDULING_WAIT_STEPS * cost.decode_step_seconds(c - 1, context) if c > 1 else 0.0
    ttft = wait + chunks * mixed
    steps = max(o - 1, 1)
    mixed_steps = min(steps, (c - 1) * chunks)
    tpot = (mixed_steps * mixed + (steps - mixed_steps) * decode) / steps
    throughput = c * o / (ttft + (o - 1) * tpot)
    return {"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "output_tok_s": throughput}
