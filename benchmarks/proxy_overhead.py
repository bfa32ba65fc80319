"""Proxy overhead: what the router adds in front of a fast OpenAI-compatible server.

The backend is the vLLM stand-in from the tests (``FakeVllm``: zero per-token delay, 16 tokens per
answer) in a process of its own; the router is ``fleetroute serve`` in another, listing it as a
``transport: http`` replica. This process is the client, over loopback:

- TTFT added: streaming ``/v1/completions`` at concurrency 1 on keep-alive connections, client-side
  time to the first SSE chunk carrying text, direct to the backend and through the router,
  interleaved request by request.
- CPU per request: the router's user + system CPU time (``/proc/<pid>/stat``) across a run at
  concurrency 64, over the requests served; the backend's for context.

``python -m benchmarks.proxy_overhead [--quick]``; ``--serve-fake PORT`` runs the backend alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from benchmarks.common import REPO, markdown_table, write_results
from protos.generation import GenerateInput
from router.request_shaper import RequestShaper
from tests.agent.fake_vllm import FakeVllm

MODEL = "fake-llama-8b"
ANSWER_TOKENS = 16
PROMPT = "Describe how a router balances load across GPUs of different speeds. " * 6
POLICIES = ("round_robin", "sal")
REPEATS = 3
LOAD_CONCURRENCY = 64
TTFT_TARGET_MS = 0.40
CPU_TARGET_US = 300.0
STARTUP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Sizes:
    ttft_pairs: int
    load_requests: int
    warmup: int


@dataclass(frozen=True)
class Spawned:
    pid: int
    url: str


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the backend process ------------------------------------------------------------------------------
async def serve_fake(port: int) -> None:
    fake = FakeVllm(model=MODEL, answer_tokens=ANSWER_TOKENS, max_num_seqs=4 * LOAD_CONCURRENCY)
    app = web.Application()
    # Real vLLM answers /health; the router's health checks would count its absence as failures.
    app.router.add_get("/health", _ok)
    app.router.add_get("/v1/models", fake._models)
    app.router.add_post("/v1/completions", fake._completions)
    app.router.add_get("/metrics", fake._metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    host, bound = runner.addresses[0][:2]
    print(f"fake vLLM at http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            fake.requests.clear()  # it records every request; nothing here reads them back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await runner.cleanup()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


# -- child processes ----------------------------------------------------------------------------------
def _read_line(process: subprocess.Popen[bytes], name: str, deadline: float, log: Path) -> str:
    if process.stdout is None:
        raise RuntimeError("the child has no stdout pipe")
    fd, line = process.stdout.fileno(), b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None:
            tail = log.read_text()[-2000:] if log.exists() else ""
            state = "timed out" if left <= 0 else f"exited with {process.returncode}"
            raise RuntimeError(f"{name} {state} before it was up:\n{tail}")
        if select.select([fd], [], [], min(left, 0.2))[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                continue
            line += chunk
    return line.decode()


@contextmanager
def spawned(command: list[str], url_pattern: str, log: Path) -> Iterator[Spawned]:
    """Start ``command``, wait for the line that gives its URL, and stop it on the way out."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        banner = ""
        while (match := re.search(url_pattern, banner)) is None:
            banner += _read_line(process, " ".join(command[1:]), deadline, log)
        yield Spawned(process.pid, match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()


def fake_process(workdir: Path) -> contextlib.AbstractContextManager[Spawned]:
    command = [sys.executable, "-m", "benchmarks.proxy_overhead", "--serve-fake", "0"]
    return spawned(command, r"fake vLLM at (http://\S+)", workdir / "fake.log")


def router_process(workdir: Path, policy: str, backend: str) -> contextlib.AbstractContextManager[Spawned]:
    # model_profile gives sal the cost model of the model the fake stands in for.
    replica = {"address": backend, "transport": "http", "id": "fake-0", "model": MODEL, "gpu": "a100-80gb",
               "model_profile": "llama-3.1-8b"}  # fmt: skip
    settings = {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0, "policy": policy, "replicas": [replica]}
    config = workdir / f"router-{policy}.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "fleetroute", "serve", "--config", str(config)]
    return spawned(command, r"(http://\S+?)/v1", workdir / f"router-{policy}.log")


# -- the client ---------------------------------------------------------------------------------------
def client_session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


def request_body(max_tokens: int) -> bytes:
    return json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}).encode()


async def completion(session: aiohttp.ClientSession, base: str, body: bytes) -> tuple[float, int]:
    """One streamed completion: seconds to the first chunk carrying text, and the text chunks."""
    started = time.perf_counter()
    first, texts = 0.0, 0
    async with session.post(
        f"{base}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    ) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{base}: HTTP {reply.status}: {(await reply.text())[:300]}")
        async for line in reply.content:
            if not line.startswith(b"data: {"):
                continue
            if any(choice.get("text") for choice in json.loads(line[6:]).get("choices", ())):
                if not texts:
                    first = time.perf_counter() - started
                texts += 1
    if not texts:
        raise RuntimeError(f"{base}: the stream carried no text")
    return first, texts


async def wait_ready(base: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with client_session(1) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/ready") as reply:
                    if reply.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the router at {base} never became ready")


async def ttft_run(direct: str, routed: str, pairs: int, warmup: int) -> dict[str, Any]:
    """Concurrency 1, one keep-alive connection per target, the two targets taking turns (and
    turns about who goes first) so that machine noise lands on both alike."""
    body = request_body(ANSWER_TOKENS)
    times: dict[str, list[float]] = {"direct": [], "router": []}
    async with client_session(1) as to_direct, client_session(1) as to_router:
        targets = {"direct": (to_direct, direct), "router": (to_router, routed)}
        for i in range(warmup + pairs):
            order = ("direct", "router") if i % 2 == 0 else ("router", "direct")
            for name in order:
                session, base = targets[name]
                first, _ = await completion(session, base, body)
                if i >= warmup:
                    times[name].append(first)
    summary: dict[str, Any] = {}
    for name, values in times.items():
        summary[f"{name}_p50_ms"] = 1e3 * statistics.median(values)
        summary[f"{name}_p99_ms"] = 1e3 * percentile(values, 0.99)
    summary["added_p50_ms"] = summary["router_p50_ms"] - summary["direct_p50_ms"]
    return summary


async def load_run(
    base: str, requests: int, pids: dict[str, int], max_tokens: int = ANSWER_TOKENS
) -> dict[str, Any]:
    """``requests`` completions at concurrency 64; CPU time of each process in ``pids`` across it."""
    body = request_body(max_tokens)
    remaining = [requests]
    short = [0]
    async with client_session(LOAD_CONCURRENCY) as session:

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                _, texts = await completion(session, base, body)
                short[0] += texts != max_tokens

        opening = [completion(session, base, body) for _ in range(LOAD_CONCURRENCY)]
        await asyncio.gather(*opening)  # every connection open before the clock starts
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY)))
        elapsed = time.perf_counter() - started
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result: dict[str, Any] = {"requests": requests, "seconds": elapsed, "requests_per_s": requests / elapsed,
                              "short_answers": short[0]}  # fmt: skip
    for name in pids:
        result[f"{name}_cpu_us_per_request"] = 1e6 * (after[name] - before[name]) / requests
    return result


def shaping_costs() -> list[dict[str, float]]:
    """In-process: what tokenizing and block-hashing a prompt costs, at the benchmark's prompt length
    and at a long one; the router does it for every request."""
    shaper = RequestShaper()
    costs = []
    for repeat in (1, 28):
        request = GenerateInput("shape", MODEL, ANSWER_TOKENS, prompt=PROMPT * repeat)
        calls = 200 if repeat == 1 else 20
        best = min(timeit.repeat(functools.partial(shaper.shape, request, 0.0), number=calls, repeat=5))
        costs.append({"prompt_tokens": len(shaper.prompt_tokens(request)), "us": 1e6 * best / calls})
    return costs


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [key for key, value in runs[0].items() if isinstance(value, float)]
    return {key: statistics.median(run[key] for run in runs) for key in keys}


async def measure_policy(fake: Spawned, router: Spawned, sizes: Sizes) -> dict[str, Any]:
    await wait_ready(router.url)
    ttft = [await ttft_run(fake.url, router.url, sizes.ttft_pairs, sizes.warmup) for _ in range(REPEATS)]
    both = {"router": router.pid, "fake": fake.pid}
    direct_loads, routed_loads, one_token_loads = [], [], []
    for _ in range(REPEATS):
        direct_loads.append(await load_run(fake.url, sizes.load_requests, {"fake": fake.pid}))
        routed_loads.append(await load_run(router.url, sizes.load_requests, both))
        one_token_loads.append(await load_run(router.url, sizes.load_requests, both, max_tokens=1))
    return {
        "ttft_runs": ttft,
        "ttft": medians(ttft),
        "direct_load_runs": direct_loads,
        "direct_load": medians(direct_loads),
        "router_load_runs": routed_loads,
        "router_load": medians(routed_loads),
        "router_one_token_load_runs": one_token_loads,
        "router_one_token_load": medians(one_token_loads),
    }


async def measure(quick: bool) -> dict[str, Any]:
    sizes = Sizes(ttft_pairs=100, load_requests=300, warmup=20) if quick else Sizes(1000, 2000, 100)
    results: dict[str, Any] = {"sizes": sizes.__dict__, "repeats": REPEATS, "cpus": os.cpu_count(),
                               "concurrency": LOAD_CONCURRENCY, "answer_tokens": ANSWER_TOKENS,
                               "loadavg_before": os.getloadavg()[0], "shaping": shaping_costs(),
                               "policies": {}}  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="proxy-overhead-") as scratch,
        fake_process(Path(scratch)) as fake,
    ):
        for policy in POLICIES:
            with router_process(Path(scratch), policy, fake.url) as router:
                async with asyncio.timeout(RUN_TIMEOUT_S):
                    results["policies"][policy] = await measure_policy(fake, router, sizes)
    return results


# -- the report ---------------------------------------------------------------------------------------
def verdict(value: float, target: float) -> str:
    return "yes" if value <= target else "**no**"


TTFT_HEADERS = ("policy", "direct p50 (ms)", "direct p99 (ms)", "router p50 (ms)", "router p99 (ms)",
                "added p50", "within target")  # fmt: skip
CPU_HEADERS = ("policy", "router CPU µs/request", "within target", "router µs at 1 token",
               "router µs per further token", "backend CPU µs/request (routed)",
               "backend CPU µs/request (direct)", "requests/s routed", "requests/s direct")  # fmt: skip


def split_cpu(numbers: dict[str, Any]) -> tuple[float, float]:
    """Router CPU per request with 1-token answers, and per further token streamed."""
    fixed = numbers["router_one_token_load"]["router_cpu_us_per_request"]
    full = numbers["router_load"]["router_cpu_us_per_request"]
    return fixed, (full - fixed) / (ANSWER_TOKENS - 1)


def where_time_goes(policies: dict[str, Any], shaping: list[dict[str, float]]) -> str:
    splits = [split_cpu(numbers) for numbers in policies.values()]
    fixed = statistics.mean(f for f, _ in splits)
    streaming = statistics.mean((ANSWER_TOKENS - 1) * t for _, t in splits)
    share = streaming / (fixed + streaming)
    missed = any(
        n["router_load"]["router_cpu_us_per_request"] > CPU_TARGET_US
        or n["ttft"]["added_p50_ms"] > TTFT_TARGET_MS
        for n in policies.values()
    )
    text = (
        f"**Where the router's time goes.** Relaying the {ANSWER_TOKENS}-token stream takes "
        f"{100 * share:.0f}% of its CPU per request ({streaming:.0f} µs), per-request work {fixed:.0f} µs."
    )
    if missed:
        text += (
            " Per chunk, the router reads what the socket holds and splits it into events; each event "
            "is still JSON-parsed (to count tokens and catch the finish reason, usage and errors) and "
            "re-encoded from a template made once per answer, and the events of one read climb the "
            "async generators (replica client, attempt, dispatcher, front door) together and leave "
            "with one write. The per-request part is HTTP handling (aiohttp parsing the client's "
            "request and sending the response head; the router's own HTTP/1.1 client writing the "
            "upstream request on a kept-alive connection and parsing the answer's head), the event "
            "loop, tokenizing and hashing the prompt, the policy decision and cluster bookkeeping, "
            "tracing spans and metrics. TTFT at concurrency 1 pays for that part plus one more "
            "loopback hop."
        )
    short_prompt, long_prompt = shaping
    text += (
        f" The prompt here is {short_prompt['prompt_tokens']:.0f} tokens; tokenizing (ids of pieces seen "
        f"before come from a table) and hashing it takes "
        f"{short_prompt['us']:.0f} µs in-process, and since that grows with the prompt "
        f"({long_prompt['us']:.0f} µs at {long_prompt['prompt_tokens']:.0f} tokens), long prompts add "
        "to the per-request part."
    )
    return text


def report(results: dict[str, Any]) -> str:
    policies: dict[str, Any] = results["policies"]
    sizes = results["sizes"]
    ttft_rows: list[list[Any]] = []
    cpu_rows: list[list[Any]] = []
    for policy, numbers in policies.items():
        t, routed, direct = numbers["ttft"], numbers["router_load"], numbers["direct_load"]
        added = f"{1e3 * t['added_p50_ms']:+.0f} µs"
        ttft_rows.append([policy, t["direct_p50_ms"], t["direct_p99_ms"], t["router_p50_ms"],
                          t["router_p99_ms"], added, verdict(t["added_p50_ms"], TTFT_TARGET_MS)])  # fmt: skip
        router_cpu = routed["router_cpu_us_per_request"]
        fixed, per_token = split_cpu(numbers)
        backend = [f"{run['fake_cpu_us_per_request']:.0f}" for run in (routed, direct)]
        cpu_rows.append([policy, f"{router_cpu:.0f}", verdict(router_cpu, CPU_TARGET_US), f"{fixed:.0f}",
                         f"{per_token:.0f}", *backend, routed["requests_per_s"],
                         direct["requests_per_s"]])  # fmt: skip
    short = sum(
        run["short_answers"]
        for n in policies.values()
        for run in n["router_load_runs"] + n["router_one_token_load_runs"]
    )
    caveat = (
        "Client, router and backend share the machine's cores, so at concurrency 64 the throughput is "
        "bounded by all three together; CPU time per request is the figure that carries to other "
        "machines. The router's CPU includes its own background work during the run (scraping the "
        "backend's `/metrics` every 150 ms, health checks, the idle gRPC server)."
    )
    load = results.get("loadavg_before")
    if load is not None:
        caveat += (
            f" The load average just before the run was {load:.1f} on {results['cpus']} cores; other "
            "work on the machine inflates the latencies most."
        )
    if short:
        caveat += f" {short} routed answers did not carry the number of text chunks asked for."
    parts = [
        f"The router (`fleetroute serve`, one `transport: http` replica) in front of the vLLM stand-in "
        f"from the tests (zero per-token delay, {results['answer_tokens']} tokens per answer), each in "
        f"its own process, driven from a third over loopback on a {results['cpus']}-core machine. "
        f"Every number is the median of {results['repeats']} runs.",
        f"**Time to first token added** (streaming `/v1/completions`, concurrency 1, keep-alive; "
        f"client-side time to the first SSE chunk carrying text; {sizes['ttft_pairs']} requests to each "
        f"target per run after {sizes['warmup']} warm-up ones, direct and routed requests taking turns). "
        f"Target ≤ +{1e3 * TTFT_TARGET_MS:.0f} µs at p50.",
        markdown_table(TTFT_HEADERS, ttft_rows),
        f"**CPU per request** at concurrency {results['concurrency']} ({sizes['load_requests']} requests "
        f"per run): user + system CPU time of each process from `/proc/<pid>/stat` across the run, "
        f"divided by the requests. Target ≤ {CPU_TARGET_US:.0f} µs for the router. The direct runs "
        f"send the same load to the backend alone, alternating with the routed ones.",
        markdown_table(CPU_HEADERS, cpu_rows),
        "The split comes from the same load with 1-token answers: what the router spends on such a "
        f"request is its per-request cost, and the rest, spread over the other {ANSWER_TOKENS - 1} "
        "tokens, is its cost per streamed chunk.",
        where_time_goes(policies, results["shaping"]),
        caveat,
    ]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--serve-fake", type=int, metavar="PORT", help="run only the backend, on PORT (0: any)"
    )
    args = parser.parse_args()
    if args.serve_fake is not None:
        asyncio.run(serve_fake(args.serve_fake))
        return
    started = time.perf_counter()
    results = asyncio.run(measure(args.quick))
    write_results(
        "proxy_overhead", "Router proxy overhead", report(results), results, started, save=not args.quick
    )


if __name__ == "__main__":
    main()
