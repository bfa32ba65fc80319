"""A learned output-length predictor in the router: what it costs per request, how online correction
and the drift guard behave, and what it changes in simulated serving.

The model is a scikit-learn boosted-trees predictor trained on the AlpacaEval instructions of a
seeded 80% of the prompts with the answer lengths of one generator (``Meta-Llama-3.1-8B-Instruct-Turbo``,
the fleet's model); everything below runs on the other 20% (read from ``../shared/data/prompts``,
CC BY-NC 4.0, never copied).

1. **Cost**: the router's request shaping (tokenize, hash blocks, predict) per request, with the
   running average, the model alone and the production stack (model, online correction, drift
   guard), and a finished request's feedback (``observe``), next to a ``sal`` decision on 8 replicas.
2. **Feedback**: the held-out requests streamed (three times over) as a router sees them, each predicted then
   observed, in three scenarios: as trained; the answers of another generator (about half as
   long); the model's predictions shuffled halfway (it stops ranking). Log error and Kendall τ
   of each source, the correction factor reached, and when the guard switched.
3. **Serving**: the held-out prompts at Poisson arrivals on ``hetero8`` engines with the
   predicted-SJF queue and at most 32 running sequences, routed by ``sal``, with the running
   average (``none``), the production stack (``model``) and the true lengths (``oracle``), at
   loads 1.0 and 1.3 of saturation.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from benchmarks.common import DATA, markdown_table, write_results
from benchmarks.decision_latency import random_view
from predictors.base import LengthEstimate, OutputLengthPredictor, PredictorFeatures
from predictors.data import LengthRow, convert_alpaca_eval, split_by_prompt
from predictors.features import FeatureConfig, FeatureExtractor
from predictors.guarded import GuardedPredictor, guard_learned
from predictors.learned import LearnedPredictor
from predictors.online import OnlineCorrectedPredictor
from predictors.running_average import RunningAveragePredictor
from predictors.saved import save_predictor
from predictors.sklearn_model import BoostedLengthModel
from protos.generation import GenerateInput
from router.policy.registry import build_policy
from router.request_shaper import RequestShaper
from router.sim.fleet import load_fleet
from router.sim.load import find_saturation
from router.sim.runner import simulate
from router.sim.simulator import SimConfig
from router.sim.traces import TraceRequest, load_alpaca_eval
from router.sim.workloads import prompted_workload

MODEL = "llama-3.1-8b"
GENERATOR = "Meta-Llama-3.1-8B-Instruct-Turbo"
OTHER_GENERATOR = "vicuna-7b-v1.5"  # answers about half as long
TEST_FRACTION = 0.2
SEED = 0
PASSES = 3  # the held-out requests stream this many times (in a seeded order), for the drift window
MAX_TOKENS = 4096
SERVING_LOADS = (1.0, 1.3)
SERVING_PREDICTORS = ("none", "model", "oracle")
SLO_TTFT_S, SLO_TPOT_S = 2.0, 0.1
# At most 32 running sequences per engine, so queues form and their order matters.
ENGINE = {"queue_policy": "predicted_sjf", "max_num_seqs": 32}


@dataclass(frozen=True, slots=True)
class Split:
    train: list[LengthRow]
    test: list[LengthRow]
    other_test: list[LengthRow]  # the held-out prompts with OTHER_GENERATOR's answers


def split_rows() -> Split:
    rows = convert_alpaca_eval(DATA / "prompts")
    train, test = split_by_prompt([r for r in rows if r.model == GENERATOR], TEST_FRACTION, SEED)
    held_out = {r.prompt for r in test}
    other = [r for r in rows if r.model == OTHER_GENERATOR and r.prompt in held_out]
    return Split(train, test, other)


def features_of(row: LengthRow, tokens: int) -> PredictorFeatures:
    return PredictorFeatures(MODEL, tokens, MAX_TOKENS, prompt_text=row.prompt)


def train_model(rows: Sequence[LengthRow], shaper: RequestShaper) -> LearnedPredictor:
    requests = [features_of(r, len(shaper.prompt_tokens(_input(r, i)))) for i, r in enumerate(rows)]
    extractor = FeatureExtractor.fit(FeatureConfig(seed=SEED), requests)
    lengths = np.array([r.output_tokens for r in rows], dtype=np.float64)
    model = BoostedLengthModel.fit(extractor.transform(requests), lengths, seed=SEED)
    return LearnedPredictor("sklearn", extractor, model)


def _input(row: LengthRow, index: int) -> GenerateInput:
    return GenerateInput(f"r{index}", MODEL, MAX_TOKENS, prompt=row.prompt)


# -- 1. cost ------------------------------------------------------------------------------------
def per_call_us(call: Callable[[], Any], calls: int, repeats: int) -> float:
    """The median over ``repeats`` of the mean microseconds per call over ``calls`` calls."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter_ns() - started) / calls / 1000)
    return statistics.median(runs)


def measure_cost(rows: Sequence[LengthRow], learned: LearnedPredictor, repeats: int) -> dict[str, float]:
    inputs = [_input(r, i) for i, r in enumerate(rows)]
    cycle = iter(range(1 << 62))

    def shaping(predictor: OutputLengthPredictor | None) -> Callable[[], Any]:
        shaper = RequestShaper()
        return lambda: shaper.shape(inputs[next(cycle) % len(inputs)], 0.0, predictor=predictor)

    stack = guard_learned(learned)
    shaper = RequestShaper()
    shaped = [shaper.shape(request, 0.0, predictor=stack).features for request in inputs]
    feedback = iter(range(1 << 62))

    def observe() -> None:
        index = next(feedback) % len(shaped)
        stack.predict(shaped[index])
        stack.observe(shaped[index], rows[index].output_tokens)

    rng = random.Random(SEED)
    policy, view = build_policy("sal"), random_view(8, rng)
    routing = shaper.shape(inputs[0], 0.0, predictor=RunningAveragePredictor()).routing
    calls = len(inputs)
    predict_only = per_call_us(lambda: stack.predict(shaped[next(cycle) % len(shaped)]), calls, repeats)
    return {
        "shape_without_predictor_us": per_call_us(shaping(None), calls, repeats),
        "shape_running_average_us": per_call_us(shaping(RunningAveragePredictor()), calls, repeats),
        "shape_model_alone_us": per_call_us(shaping(learned), calls, repeats),
        "shape_production_stack_us": per_call_us(shaping(guard_learned(learned)), calls, repeats),
        "stack_predict_us": predict_only,
        "stack_predict_and_observe_us": per_call_us(observe, calls, repeats),
        "sal_decide_8_replicas_us": per_call_us(lambda: policy.decide(routing, view, rng), calls, repeats),
    }


# -- 2. feedback --------------------------------------------------------------------------------
class ShuffledAfter:
    """``inner``'s predictions, but after ``start`` calls those of a random other request."""

    def __init__(self, inner: OutputLengthPredictor, pool: Sequence[PredictorFeatures], start: int) -> None:
        self.inner, self.pool, self.start, self.calls = inner, pool, start, 0
        self.rng = random.Random(SEED)

    def predict(self, features: PredictorFeatures) -> LengthEstimate:
        self.calls += 1
        if self.calls > self.start:
            features = self.rng.choice(self.pool)
        return self.inner.predict(features)

    def observe(self, features: PredictorFeatures, actual_tokens: int) -> None:
        self.inner.observe(features, actual_tokens)


def stream(
    predictor: OutputLengthPredictor, requests: Sequence[PredictorFeatures], lengths: Sequence[int]
) -> np.ndarray:
    """Each request predicted then observed, in order; the predicted medians."""
    medians = []
    for features, tokens in zip(requests, lengths, strict=True):
        medians.append(predictor.predict(features).p50)
        predictor.observe(features, tokens)
    return np.array(medians)


def quality(medians: np.ndarray, lengths: Sequence[int]) -> dict[str, float]:
    actual = np.array(lengths, dtype=np.float64)
    error = float(np.mean(np.abs(np.log1p(medians) - np.log1p(actual))))
    tau = float(kendalltau(medians, actual).statistic)
    return {"log_error": round(error, 3), "kendall_tau": round(0.0 if math.isnan(tau) else tau, 3)}


def feedback_scenario(
    learned: LearnedPredictor, requests: Sequence[PredictorFeatures], lengths: Sequence[int], shuffle: bool
) -> dict[str, Any]:
    half = len(requests) // 2

    def model() -> OutputLengthPredictor:
        return ShuffledAfter(learned, requests, half) if shuffle else learned

    corrected = OnlineCorrectedPredictor(model())
    switches: list[int] = []
    guarded = GuardedPredictor(corrected, on_switch=lambda _: switches.append(len(stack)))
    stack: list[float] = []
    for features, tokens in zip(requests, lengths, strict=True):
        stack.append(guarded.predict(features).p50)
        guarded.observe(features, tokens)
    sources = {
        "running_average": stream(RunningAveragePredictor(), requests, lengths),
        "model": stream(model(), requests, lengths),
        "model+correction": stream(OnlineCorrectedPredictor(model()), requests, lengths),
        "production stack": np.array(stack),
    }
    second = slice(half, None)
    result: dict[str, Any] = {
        name: {"all": quality(m, lengths), "second_half": quality(m[second], lengths[second])}
        for name, m in sources.items()
    }
    result["correction_factor"] = round(corrected.factor(MODEL), 3)
    result["switches_at_request"] = switches
    result["final_source"] = guarded.state.source.value
    return result


# -- 3. serving ---------------------------------------------------------------------------------
def serving(model_dir: Path, test: Sequence[LengthRow], requests: int) -> dict[str, Any]:
    rows = [r for r in load_alpaca_eval(DATA / "prompts", GENERATOR) if r.prompt in {t.prompt for t in test}]
    trace: list[TraceRequest] = prompted_workload(rows, 1.0, count=requests, seed=SEED)
    fleet = load_fleet("hetero8").model_copy(update={"engine": ENGINE})
    config = SimConfig(seed=SEED)
    saturation = find_saturation(trace, fleet, min(200, requests), config)
    results: dict[str, Any] = {"capacity_rps": round(saturation.capacity_rps, 3)}
    for load in SERVING_LOADS:
        for predictor in SERVING_PREDICTORS:
            spec = f"model:{model_dir}" if predictor == "model" else predictor
            run = simulate(
                trace, fleet, "sal", config, rate_scale=load * saturation.rate_scale, predictor=spec
            )
            summary = run.summary(SLO_TTFT_S, SLO_TPOT_S)
            results[f"{load}/{predictor}"] = {
                key: summary[key]
                for key in ("completed", "ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "goodput")
            }
    return results


def run(test_limit: int | None, requests: int, repeats: int, save: bool) -> None:
    started = time.perf_counter()
    split = split_rows()
    test = split.test[:test_limit] if test_limit else split.test
    shaper = RequestShaper()
    learned = train_model(split.train, shaper)
    requests_of = {r.prompt: features_of(r, len(shaper.prompt_tokens(_input(r, 0)))) for r in split.test}
    rng = random.Random(SEED)
    order = [i for _ in range(PASSES) for i in rng.sample(range(len(test)), len(test))]
    held_out = [requests_of[test[i].prompt] for i in order]
    other = {r.prompt: r.output_tokens for r in split.other_test}

    cost = measure_cost(test, learned, repeats)
    lengths = [test[i].output_tokens for i in order]
    feedback = {
        "as_trained": feedback_scenario(learned, held_out, lengths, shuffle=False),
        "other_generator": feedback_scenario(
            learned,
            [f for f in held_out if f.prompt_text in other],
            [other[f.prompt_text or ""] for f in held_out if f.prompt_text in other],
            shuffle=False,
        ),
        "shuffled_halfway": feedback_scenario(learned, held_out, lengths, shuffle=True),
    }
    with tempfile.TemporaryDirectory() as directory:
        model_dir = save_predictor(learned, Path(directory) / "model")
        served = serving(model_dir, test, requests)
    data = {
        "train_rows": len(split.train),
        "test_rows": len(test),
        "feedback_requests": len(held_out),
        "cost_us": {k: round(v, 1) for k, v in cost.items()},
        "feedback": feedback,
        "serving": served,
    }
    write_results(
        "predictor_routing",
        "A learned output-length predictor in the router",
        report(data),
        data,
        started,
        save,
    )


def report(data: dict[str, Any]) -> str:
    cost = data["cost_us"]
    cost_rows = [[name.removesuffix("_us").replace("_", " "), value] for name, value in cost.items()]
    parts = [
        f"Model: scikit-learn boosted trees on {data['train_rows']} AlpacaEval prompts with "
        f"`{GENERATOR}`'s answer lengths; evaluated on {data['test_rows']} held-out prompts "
        f"({data['feedback_requests']} requests in part 2).",
        "### 1. Cost per request (µs, one thread, median of repeats)\n\n"
        + markdown_table(["step", "µs"], cost_rows),
        "### 2. Online feedback (held-out requests in order: predict, then observe)",
    ]
    for scenario, result in data["feedback"].items():
        rows = [
            [name, q["all"]["log_error"], q["all"]["kendall_tau"], q["second_half"]["log_error"],
             q["second_half"]["kendall_tau"]]
            for name, q in result.items()
            if isinstance(q, dict)
        ]  # fmt: skip
        switches = ", ".join(str(s) for s in result["switches_at_request"]) or "none"
        parts.append(
            f"**{scenario}** — correction factor reached {result['correction_factor']}, guard switches at "
            f"request {switches}, final source `{result['final_source']}`\n\n"
            + markdown_table(["source", "log error", "τ", "log error (2nd half)", "τ (2nd half)"], rows)
        )
    served = data["serving"]
    rows = [
        [
            key.split("/")[0],
            key.split("/")[1],
            *(v[m] for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "goodput")),
        ]
        for key, v in served.items()
        if isinstance(v, dict)
    ]
    parts.append(
        f"### 3. Serving (`hetero8`, engines {ENGINE}, `sal`; saturation "
        f"{served['capacity_rps']} req/s)\n\n"
        + markdown_table(["load", "predictor", "ttft p50", "ttft p99", "e2e p50", "e2e p99", "goodput"], rows)
    )
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="60 held-out rows, 150 simulated requests, nothing saved"
    )
    args = parser.parse_args()
    if args.quick:
        run(test_limit=60, requests=150, repeats=1, save=False)
    else:
        run(test_limit=None, requests=800, repeats=3, save=True)


if __name__ == "__main__":
    main()
