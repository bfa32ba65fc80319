"""Simulator fidelity: (a) one simulated replica against the measured vLLM end-to-end points;
(b) a short trace replayed through a real-time local fleet and through the simulator.

(a) Every point of ``gpu_profiles/e2e/`` (read by ``calibration_data.load_e2e``) with the request
lengths of ``calibration_e2e.request_lengths``. Bursts (all requests at t=0) and single-client runs
(each request alone; arrivals spaced far apart) go through the simulator itself on a one-replica
fleet with the benchmark's vLLM settings and no router latency. Closed loops with several clients
cannot be expressed as an open-loop trace, so those points use ``calibration_e2e.run_scenario``
(the same engine and cost model, stepped by the calibration's closed-loop driver). Host-bound
points are shown but are outside a GPU model's scope (see the calibration report).

(b) The first requests of ``azure2023_conv`` at a compressed rate on two replicas under
``round_robin``: sent by an aiohttp client to the router of a ``LocalFleet`` (sim agents stepping in
real time, ``speedup`` times faster) at the trace's arrival times divided by the speedup, with
``ignore_eos`` and ``max_tokens`` = the trace's output length; and simulated with the same fleet,
policy and arrivals. Real-time latencies are multiplied by the speedup to compare in model time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

import aiohttp

from benchmarks.calibration_data import E2ePoint, Scenario, load_e2e
from benchmarks.calibration_e2e import request_lengths, run_scenario
from benchmarks.common import DATA, TRACES, markdown_table, write_results
from replica_agent.engine import RequestSpec, SamplingParams
from replica_agent.executors.gpu_profiles import get_model_profile
from router.policy.registry import build_policy
from router.service.local_fleet import FleetGroup, LocalFleet
from router.service.local_fleet import FleetSpec as LocalFleetSpec
from router.sim.fleet import FleetSpec, ReplicaGroup, build_fleet
from router.sim.report import RequestRecord
from router.sim.simulator import SimConfig, Simulator
from router.sim.traces import TraceRequest, load_azure_csv, prompt_tokens_for

SINGLE_CLIENT_GAP_S = 60.0  # spacing of single-client requests: each runs alone
SINGLE_REPLICA_TOLERANCE = 0.30
FLEET_TOLERANCE = 0.20
FLEET_GPUS = ("a100-80gb", "a100-80gb")
FLEET_POLICY = "round_robin"
FLEET_MAX_MODEL_LEN = 8192
MODEL = "llama-3.1-8b"


# -- (a) one replica against the measured vLLM points ------------------------------------------
def simulate_scenario(gpu: str, scenario: Scenario, seed: int = 0) -> dict[str, float]:
    """Median ``ttft_ms`` and ``tpot_ms`` of a burst or single-client ``scenario`` on one simulated
    replica (TTFT carries the scenario's own front-end overhead when it names one)."""
    s = scenario
    engine = {
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "enable_chunked_prefill": s.enable_chunked_prefill,
        "max_model_len": s.max_model_len,
    }
    fleet = build_fleet(FleetSpec(name="single", replicas=(ReplicaGroup(gpu=gpu),), engine=engine), seed=seed)
    lengths = request_lengths(s, random.Random(seed))
    gap = 0.0 if s.num_requests == s.concurrency else SINGLE_CLIENT_GAP_S
    trace = [TraceRequest(i * gap, prompt, output) for i, (prompt, output) in enumerate(lengths)]
    specs = [
        RequestSpec(
            f"r{i}",
            prompt_tokens_for(i, r),
            arrival_time=r.arrival_s,
            params=SamplingParams(max_tokens=r.output_tokens, ignore_eos=True),
        )
        for i, r in enumerate(trace)
    ]
    config = SimConfig(router_latency_s=0.0, seed=seed)
    result = Simulator(fleet, build_policy(FLEET_POLICY), config).run(specs)
    shift = 0.0
    if s.request_overhead_s is not None:
        shift = s.request_overhead_s - fleet[0].replica.cost_model.request_overhead_s
    return {
        "ttft_ms": statistics.median(r.ttft_s + shift for r in result.records) * 1e3,
        "tpot_ms": statistics.median(r.tpot_s for r in result.records if r.output_tokens > 1) * 1e3,
    }


def single_replica_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, Scenario], tuple[str, dict[str, float]]] = {}
    points: list[E2ePoint] = [p for p in load_e2e(DATA / "gpu_profiles") if p.metric != "output_tok_s"]
    for p in points:
        key = (p.gpu, p.scenario)
        if key not in cache:
            s = p.scenario
            if s.num_requests == s.concurrency or s.concurrency == 1:
                cache[key] = ("simulator", simulate_scenario(p.gpu, s))
            else:
                cache[key] = ("closed-loop engine replay", run_scenario(p.gpu, p.model, s))
        method, modelled = cache[key]
        error = modelled[p.metric] / p.measured - 1.0
        rows.append(
            {
                "gpu": p.gpu,
                "metric": p.metric,
                "concurrency": p.scenario.concurrency,
                "scenario": p.scenario.label,
                "method": method,
                "measured": p.measured,
                "modelled": round(modelled[p.metric], 3),
                "error": round(error, 4),
                "host_bound": p.scenario.host_bound,
                "within": abs(error) <= SINGLE_REPLICA_TOLERANCE,
                "source": p.source,
            }
        )
    return rows


# -- (b) real-time local fleet against the simulator ----------------------------------------
def fleet_trace(requests: int) -> list[TraceRequest]:
    trace = load_azure_csv(TRACES / "azure2023_conv.csv", limit=4 * requests)
    fitting = [r for r in trace if r.prompt_tokens + r.output_tokens <= FLEET_MAX_MODEL_LEN]
    return fitting[:requests]


def simulate_fleet(
    trace: list[TraceRequest], prompts: list[list[int]], rate_scale: float
) -> list[RequestRecord]:
    spec = FleetSpec(
        name="fidelity",
        replicas=tuple(ReplicaGroup(gpu=gpu) for gpu in FLEET_GPUS),
        engine={"max_model_len": FLEET_MAX_MODEL_LEN},
    )
    simulator = Simulator(build_fleet(spec), build_policy(FLEET_POLICY), SimConfig())
    specs = (
        RequestSpec(
            f"r{i}",
            tuple(prompt),
            arrival_time=r.arrival_s / rate_scale,
            params=SamplingParams(max_tokens=r.output_tokens, ignore_eos=True),
        )
        for i, (r, prompt) in enumerate(zip(trace, prompts, strict=True))
    )
    return list(simulator.run(specs).records)


async def replay_realtime(
    trace: list[TraceRequest], prompts: list[list[int]], rate_scale: float, speedup: float
) -> list[dict[str, float]]:
    """(ttft_s, e2e_s) per request in model time, from a real-time fleet."""
    groups = [
        FleetGroup(gpu=gpu, model=MODEL, engine={"max_model_len": FLEET_MAX_MODEL_LEN}) for gpu in FLEET_GPUS
    ]
    settings = {"http_port": 0, "grpc_port": 0, "policy": FLEET_POLICY, "health_check_interval_s": 0.5}
    fleet = LocalFleet(LocalFleetSpec(replicas=groups), settings, speedup=speedup)
    router = await fleet.start()
    url = f"http://127.0.0.1:{router.ports.http}/v1/completions"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            await _send(session, url, [1, 2, 3], 2)  # warm-up, not measured
            started = time.perf_counter()
            tasks = []
            for index, request in enumerate(trace):
                delay = request.arrival_s / rate_scale / speedup - (time.perf_counter() - started)
                if delay > 0:
                    await asyncio.sleep(delay)
                send = _send(session, url, prompts[index], request.output_tokens)
                tasks.append(asyncio.create_task(send))
            timings = await asyncio.gather(*tasks)
    finally:
        await fleet.stop()
    return [{"ttft_s": ttft * speedup, "e2e_s": e2e * speedup} for ttft, e2e in timings]


async def _send(
    session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int
) -> tuple[float, float]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    sent = time.perf_counter()
    first: float | None = None
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            text = line.decode().strip()
            if first is None and text.startswith("data:") and text != "data: [DONE]" and _has_text(text):
                first = time.perf_counter()
    done = time.perf_counter()
    return (done if first is None else first) - sent, done - sent


def _has_text(event: str) -> bool:
    choices = json.loads(event.removeprefix("data:"))["choices"]
    return bool(choices) and choices[0].get("text") is not None


def fleet_prompts(trace: list[TraceRequest], seed: int = 0) -> list[list[int]]:
    """Random in-vocabulary prompts of the trace's lengths (no two share a prefix block)."""
    rng = random.Random(seed)
    vocab = get_model_profile(MODEL).vocab_size
    return [[rng.randrange(vocab) for _ in range(r.prompt_tokens)] for r in trace]


def fleet_rows(requests: int, rate_scale: float, speedups: list[float]) -> list[dict[str, Any]]:
    """Simulated against real-time medians, one pair of rows (TTFT, E2E) per speedup."""
    trace = fleet_trace(requests)
    prompts = fleet_prompts(trace)
    simulated = simulate_fleet(trace, prompts, rate_scale)
    rows: list[dict[str, Any]] = []
    for speedup in speedups:
        real = asyncio.run(replay_realtime(trace, prompts, rate_scale, speedup))
        for metric in ("ttft_s", "e2e_s"):
            sim_median = statistics.median(getattr(r, metric) for r in simulated)
            real_median = statistics.median(r[metric] for r in real)
            error = sim_median / real_median - 1.0
            rows.append(
                {
                    "speedup": speedup,
                    "metric": f"{metric.removesuffix('_s')} median (s)",
                    "real_time": round(real_median, 4),
                    "simulated": round(sim_median, 4),
                    "error": round(error, 4),
                    "within": abs(error) <= FLEET_TOLERANCE,
                    "requests": len(trace),
                    "completed_sim": len(simulated),
                    "completed_real": len(real),
                }
            )
    return rows


def run(requests: int, rate_scale: float, speedups: list[float], save: bool) -> None:
    started = time.perf_counter()
    single = single_replica_rows()
    fleet = fleet_rows(requests, rate_scale, speedups)
    gpu_bound = [r for r in single if not r["host_bound"]]
    single_table = markdown_table(
        ["gpu", "metric", "C", "scenario", "method", "measured", "modelled", "error", "within ±30%"],
        [
            [r["gpu"], r["metric"] + (" (host-bound)" if r["host_bound"] else ""), r["concurrency"],
             r["scenario"], r["method"], r["measured"], r["modelled"], f"{r['error']:+.1%}",
             "yes" if r["within"] else "no"]
            for r in single
        ],
    )  # fmt: skip
    fleet_table = markdown_table(
        ["speedup", "metric", "real-time fleet", "simulator", "error", "within ±20%"],
        [[f"{r['speedup']:g}x", r["metric"], r["real_time"], r["simulated"], f"{r['error']:+.1%}",
          "yes" if r["within"] else "no"] for r in fleet],
    )  # fmt: skip
    body = (
        "## (a) One simulated replica vs measured vLLM end-to-end points\n\n"
        f"{sum(r['within'] for r in gpu_bound)} of {len(gpu_bound)} GPU-bound points within ±30% "
        f"(host-bound points shown for completeness).\n\n{single_table}\n\n"
        "## (b) Real-time local fleet vs simulator\n\n"
        f"{fleet[0]['requests']} requests of `azure2023_conv` at {rate_scale:g}x the trace's rate on "
        f"{' + '.join(FLEET_GPUS)} under `{FLEET_POLICY}`; the real-time fleet ran `speedup` times faster "
        "than model time and its latencies are multiplied back. Medians in model seconds. The real "
        "path adds the host's HTTP/gRPC/streaming latency (a few ms of wall time), which the speedup "
        "multiplies: it shows in TTFT (tens of ms) first, and grows with the speedup. The real-time "
        f"numbers vary slightly from run to run.\n\n{fleet_table}"
    )
    data = {"single_replica": single, "fleet": fleet, "rate_scale": rate_scale}
    write_results("sim_fidelity", "Simulator fidelity", body, data, started, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rate-scale", type=float, default=2.0)
    parser.add_argument("--speedups", default="1,2", help="comma-separated real-time speedups")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    requests = 12 if args.quick else args.requests
    speedups = [float(value) for value in args.speedups.split(",")]
    run(requests, args.rate_scale, speedups, save=not args.quick)


if __name__ == "__main__":
    main()
