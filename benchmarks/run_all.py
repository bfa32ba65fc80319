"""Run every benchmark in turn: ``python -m benchmarks.run_all [--quick]``.

Full runs rewrite benchmarks/results/ (about half an hour on 2 cores, most of it the simulator's
policy comparison); ``--quick`` runs small versions
of each, prints them and saves nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import REPO

SUITE = (
    "calibration",
    "batching",
    "kv_waste",
    "prefix_cache",
    "queue_policies",
    "torch_executor",
    "agent_overhead",
    "decision_latency",
    "proxy_overhead",
    "sim_fidelity",
    "sim_speed",
    "sim_policies",
    "sim_sensitivity",
    "torch_length_heads",
    "predictors",
    "predictor_routing",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", default=",".join(SUITE), help="comma-separated subset of " + ", ".join(SUITE)
    )
    args = parser.parse_args()
    failed = []
    for name in args.only.split(","):
        if name not in SUITE:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(SUITE)}")
        command = [sys.executable, "-m", f"benchmarks.{name}"]
        if args.quick and name != "calibration":
            command.append("--quick")
        started = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run(command, cwd=REPO, check=False).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - started:.1f} s ===", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
