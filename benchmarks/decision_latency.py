"""Routing decision latency: how long ``Profile.decide`` takes per named policy, in pure Python, on
random but plausible views of mixed-GPU fleets of 8 to 1024 replicas.

Each decision sees a view in which one replica has just sent a new snapshot (its running batch
changed), as in production where snapshots and decisions interleave. Requests share a few long
system prompts, so some replicas hold a prefix of them in a dictionary-backed prefix index.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from collections.abc import Sequence

from benchmarks.common import markdown_table, write_results
from protos.routing import LengthEstimate, RoutingRequest
from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import get_gpu_profile, get_model_profile
from router.policy.registry import build_policy, policy_names
from router.policy.view import ClusterView, ReplicaLoad, ReplicaSpeed

MODEL = "llama-3.1-8b"
GPUS = ("h100-80gb", "a100-80gb", "a100-40gb", "a40-48gb", "v100-32gb", "l4-24gb")
BLOCK_SIZE = 16
SYSTEM_PROMPTS = 16


class DictPrefixIndex:
    """The blocks each replica caches, as a set of block hashes per replica; a lookup walks the
    request's chain until the first block the replica lacks."""

    def __init__(self, cached: dict[str, set[int]]) -> None:
        self.cached = cached

    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        held = self.cached.get(replica_id)
        if not held:
            return 0
        matched = 0
        for block_hash in block_hashes:
            if block_hash not in held:
                break
            matched += 1
        return matched

    def match_blocks_many(self, replica_ids: Sequence[str], block_hashes: Sequence[int]) -> list[int]:
        """``match_blocks`` for each replica, in one call (as the router's own prefix index offers)."""
        if not block_hashes:
            return [0] * len(replica_ids)
        cached, first = self.cached, block_hashes[0]
        counts = []
        for replica_id in replica_ids:
            held = cached.get(replica_id)
            matched = 0
            if held and first in held:
                for block_hash in block_hashes:
                    if block_hash not in held:
                        break
                    matched += 1
            counts.append(matched)
        return counts


def system_prompt_hashes(prompt: int, blocks: int) -> list[int]:
    return [prompt * 1_000_000 + i for i in range(blocks)]


def random_replica(index: int, rng: random.Random, speeds: dict[str, ReplicaSpeed]) -> ReplicaLoad:
    gpu = GPUS[index % len(GPUS)]
    model = speeds[gpu].cost_model
    total = model.kv_capacity_blocks(BLOCK_SIZE) if model is not None else 10_000
    running = rng.randint(0, 96)
    context = running * rng.randint(200, 3000)
    used = min(total, -(-context // BLOCK_SIZE) + rng.randint(0, total // 10))
    waiting = rng.choice((0, 0, 0, rng.randint(1, 30)))
    return ReplicaLoad(
        replica_id=f"{gpu}-{index}",
        model=MODEL,
        gpu=gpu,
        tier="cloud" if index % 8 else "edge",
        speed=speeds[gpu],
        total_blocks=total,
        free_blocks=total - used,
        block_size=BLOCK_SIZE,
        num_running=running,
        num_waiting=waiting,
        waiting_prefill_tokens=waiting * rng.randint(200, 4000),
        running_context_tokens=context,
        inflight_requests=running + waiting + rng.randint(0, 4),
        pending_requests=rng.randint(0, 2),
        pending_prefill_tokens=rng.randint(0, 4000),
        pending_blocks=rng.randint(0, 200),
        healthy=rng.random() > 0.02,
        staleness_s=rng.uniform(0.0, 0.2),
    )


def random_view(size: int, rng: random.Random) -> ClusterView:
    speeds = {g: ReplicaSpeed(StepCostModel(get_gpu_profile(g), get_model_profile(MODEL))) for g in GPUS}
    replicas = tuple(random_replica(i, rng, speeds) for i in range(size))
    cached: dict[str, set[int]] = {}
    for r in replicas:
        for prompt in rng.sample(range(SYSTEM_PROMPTS), 2):
            cached.setdefault(r.replica_id, set()).update(system_prompt_hashes(prompt, rng.randint(4, 64)))
    return ClusterView(replicas, 0.0, DictPrefixIndex(cached))


def random_request(index: int, rng: random.Random) -> RoutingRequest:
    system_blocks = rng.randint(8, 64)
    own_blocks = rng.randint(0, 200)
    hashes = system_prompt_hashes(rng.randrange(SYSTEM_PROMPTS), system_blocks)
    hashes += [-(index * 1000 + i) for i in range(own_blocks)]
    prompt = (system_blocks + own_blocks) * BLOCK_SIZE + rng.randint(1, 15)
    median = rng.uniform(50, 400)
    predicted = LengthEstimate(median * 1.4, median, median * 3)
    return RoutingRequest(f"req-{index}", MODEL, prompt, tuple(hashes), 2048, predicted)


def with_new_snapshot(view: ClusterView, rng: random.Random) -> ClusterView:
    """The view after one replica reports a changed running batch."""
    replicas = list(view.replicas)
    i = rng.randrange(len(replicas))
    running = rng.randint(0, 96)
    replicas[i] = dataclasses.replace(
        replicas[i], num_running=running, running_context_tokens=running * rng.randint(200, 3000)
    )
    return dataclasses.replace(view, replicas=tuple(replicas))


def measure(policy: str, size: int, decisions: int, seed: int) -> tuple[float, float]:
    """(p50, p99) microseconds per decision."""
    rng = random.Random(seed)
    profile, view = build_policy(policy), random_view(size, rng)
    requests = [random_request(i, rng) for i in range(64)]
    for request in requests[:16]:  # warm up
        profile.decide(request, view, rng)
    samples: list[float] = []
    for i in range(decisions):
        view = with_new_snapshot(view, rng)
        request = requests[i % len(requests)]
        started = time.perf_counter_ns()
        profile.decide(request, view, rng)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def run(
    sizes: Sequence[int], decisions: int, repeats: int, save: bool, policies: Sequence[str] | None = None
) -> None:
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for policy in policies or policy_names():
        results[policy] = {}
        for size in sizes:
            count = max(200, decisions * 64 // max(64, size))
            runs = [measure(policy, size, count, seed=size * 100 + i) for i in range(repeats)]
            p50, p99 = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            results[policy][str(size)] = {"p50_us": round(p50, 1), "p99_us": round(p99, 1)}
    headers = ["policy"] + [f"{size} replicas p50 / p99 µs" for size in sizes]
    rows = [
        [policy] + [f"{r[str(s)]['p50_us']:.0f} / {r[str(s)]['p99_us']:.0f}" for s in sizes]
        for policy, r in results.items()
    ]
    body = (
        f"`Profile.decide` per named policy, pure Python, one thread: the median over {repeats} runs of "
        f"each run's p50 and p99, a run being {decisions} decisions at up to 64 replicas, proportionally "
        "fewer above (at least 200). Fleets mix "
        f"{', '.join(GPUS)} serving `{MODEL}`; each decision follows a new snapshot from one replica; "
        "requests share 16 system prompts cached on two random replicas each, found through a "
        "set-per-replica prefix index (its lookups are part of the time; like the router's own index, it "
        "answers for all candidates in one call).\n\n" + markdown_table(headers, rows)
    )
    write_results("decision_latency", "Routing decision latency", body, results, started, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="8 and 64 replicas, 300 decisions, nothing saved"
    )
    parser.add_argument("--policies", nargs="+", choices=policy_names(), help="only these (nothing saved)")
    parser.add_argument("--sizes", nargs="+", type=int, help="only these fleet sizes (nothing saved)")
    args = parser.parse_args()
    partial = args.policies is not None or args.sizes is not None
    if args.quick:
        run(args.sizes or (8, 64), 300, 1, save=False, policies=args.policies)
    else:
        sizes = args.sizes or (8, 64, 512, 1024)
        run(sizes, args.decisions, args.repeats, save=not partial, policies=args.policies)


if __name__ == "__main__":
    main()
