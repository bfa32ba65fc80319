"""Agent overhead with a zero-cost executor: how fast the real-time loop steps, how many tokens per
second it streams over gRPC and over SSE, and how quickly snapshots reach a watcher.

The agent runs as its own process (``fleetroute agent --speedup 1e9``: the cost-model GPU with its
modelled time divided away, so every microsecond measured is the agent's own), driven from this
process over loopback. ``python -m benchmarks.agent_overhead [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc

from benchmarks.common import REPO, markdown_table, write_results
from protos import replica_pb2 as pb
from protos import replica_pb2_grpc as pb_grpc
from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig
from replica_agent.factory import build_backend
from replica_agent.service.backend import GenerateInput

MODEL = "llama-3.1-8b"
PROMPT = "Describe how a router balances load across GPUs of different speeds. " * 6


@dataclass(frozen=True)
class StreamRun:
    transport: str
    concurrency: int
    requests: int
    tokens: int
    chunks: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def in_process_loop(requests: int, max_tokens: int) -> dict[str, float]:
    """The loop alone: engine steps and token delivery with no network and no GPU time."""
    backend = build_backend(AgentConfig(executor="sim", gpu="a100-80gb", model=MODEL), instant=True)
    if not isinstance(backend, BuiltinBackend):
        raise TypeError("the sim executor should give the built-in backend")
    await backend.start()

    async def one(i: int) -> int:
        request = GenerateInput(f"r{i}", MODEL, max_tokens, prompt=PROMPT, ignore_eos=True)
        return sum([len(e.token_ids) async for e in backend.generate(request)])

    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    elapsed = time.perf_counter() - started
    steps = backend.loop.steps
    await backend.stop(1.0)
    return {
        "steps_per_s": steps / elapsed,
        "tokens_per_s": tokens / elapsed,
        "steps": steps,
        "tokens": tokens,
    }


@contextmanager
def agent_process() -> Iterator[tuple[int, int]]:
    command = [sys.executable, "-m", "fleetroute", "agent", "--speedup", "1e9", "--grpc-port", "0",
               "--http-port", "0", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        banner = "".join(process.stdout.readline() for _ in range(3)) if process.stdout else ""
        grpc_port = int(re.search(r"gRPC\s+\S+:(\d+)", banner).group(1))  # type: ignore[union-attr]
        http_port = int(re.search(r"HTTP\s+http://\S+:(\d+)", banner).group(1))  # type: ignore[union-attr]
        yield grpc_port, http_port
    finally:
        process.terminate()
        process.wait(timeout=30)


async def grpc_streams(port: int, concurrency: int, requests: int, max_tokens: int) -> StreamRun:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ReplicaStub(channel)
        queue = list(range(requests))
        totals = [0, 0]

        async def worker() -> None:
            while queue:
                i = queue.pop()
                request = pb.GenerateRequest(
                    request_id=f"g{concurrency}-{i}", model=MODEL, prompt=PROMPT,
                    params=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                )  # fmt: skip
                async for chunk in stub.Generate(request):
                    totals[0] += len(chunk.token_ids)
                    totals[1] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return StreamRun("gRPC", concurrency, requests, totals[0], totals[1], time.perf_counter() - started)


async def sse_streams(port: int, concurrency: int, requests: int, max_tokens: int) -> StreamRun:
    url = f"http://127.0.0.1:{port}/v1/completions"
    queue = list(range(requests))
    totals = [0, 0]
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True,
                        "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
                async with session.post(
                    url, json=body, headers={"X-Request-Id": f"s{concurrency}-{i}"}
                ) as reply:
                    reply.raise_for_status()
                    async for line in reply.content:
                        if not line.startswith(b"data: {"):
                            continue
                        event = json.loads(line[6:])
                        if event.get("usage"):
                            totals[0] += event["usage"]["completion_tokens"]
                        elif event.get("choices"):
                            totals[1] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return StreamRun("SSE", concurrency, requests, totals[0], totals[1], time.perf_counter() - started)


async def snapshot_latency(port: int, seconds: float, max_tokens: int) -> dict[str, float]:
    """Snapshots watched while a gRPC load runs: age on arrival (agent clock to watcher clock, the
    same machine) and the gap between pushes."""
    ages: list[float] = []
    arrivals: list[float] = []

    async def watch(stub: pb_grpc.ReplicaStub) -> None:
        async for snapshot in stub.WatchSnapshots(pb.WatchRequest()):
            now = time.time()
            ages.append(now - snapshot.time)
            arrivals.append(now)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watcher = asyncio.create_task(watch(pb_grpc.ReplicaStub(channel)))
        load = asyncio.create_task(grpc_streams(port, 16, 10**6, max_tokens))
        await asyncio.sleep(seconds)
        load.cancel()
        watcher.cancel()
        await asyncio.gather(load, watcher, return_exceptions=True)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {
        "snapshots": len(ages),
        "age_p50_ms": 1e3 * percentile(ages, 0.5),
        "age_p99_ms": 1e3 * percentile(ages, 0.99),
        "gap_p50_ms": 1e3 * statistics.median(gaps),
        "gap_max_ms": 1e3 * max(gaps),
    }


async def measure(quick: bool) -> dict[str, Any]:
    max_tokens = 64 if quick else 256
    loop_stats = await in_process_loop(16 if quick else 64, max_tokens)
    runs: list[StreamRun] = []
    with agent_process() as (grpc_port, http_port):
        for concurrency in (1, 16) if quick else (1, 16, 64):
            requests = max(4, concurrency * (2 if quick else 4))
            runs.append(await grpc_streams(grpc_port, concurrency, requests, max_tokens))
            runs.append(await sse_streams(http_port, concurrency, requests, max_tokens))
        snapshots = await snapshot_latency(grpc_port, 1.0 if quick else 3.0, max_tokens)
    return {"loop": loop_stats, "streams": [r.__dict__ | {"tokens_per_s": r.tokens_per_s} for r in runs],
            "snapshots": snapshots}  # fmt: skip


def report(results: dict[str, Any]) -> str:
    loop, streams, snaps = results["loop"], results["streams"], results["snapshots"]
    parts = [
        "In-process loop (no network, zero-cost executor): "
        f"**{loop['steps_per_s']:,.0f} steps/s**, {loop['tokens_per_s']:,.0f} tokens/s delivered.",
        markdown_table(
            ["transport", "concurrent streams", "requests", "tokens/s streamed", "chunks/s"],
            [
                [
                    s["transport"],
                    s["concurrency"],
                    s["requests"],
                    s["tokens_per_s"],
                    s["chunks"] / s["seconds"],
                ]
                for s in streams
            ],
        ),
        markdown_table(
            ["snapshots watched", "age on arrival p50 (ms)", "p99 (ms)", "gap p50 (ms)", "gap max (ms)"],
            [
                [
                    snaps["snapshots"],
                    snaps["age_p50_ms"],
                    snaps["age_p99_ms"],
                    snaps["gap_p50_ms"],
                    snaps["gap_max_ms"],
                ]
            ],
        ),
        "Agent and client share the machine's cores (2 in CI), so the client's own parsing is part "
        "of every number; the gap is how often a watcher hears from the agent while it streams "
        "to 16 clients (target ≤ 100 ms).",
    ]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    results = asyncio.run(measure(args.quick))
    write_results(
        "agent_overhead", "Replica agent overhead", report(results), results, started, not args.quick
    )


if __name__ == "__main__":
    main()
