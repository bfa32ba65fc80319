"""The pure core (DESIGN.md section 2) must not depend on I/O frameworks, directly or transitively."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"asyncio", "grpc", "aiohttp", "redis", "opentelemetry"}
CORE_DIRS = ["replica_agent/engine", "router/policy", "router/state", "router/sim", "predictors"]
CORE_FILES = [
    "protos/block_hash.py",
    "protos/snapshot.py",
    "protos/text.py",
    "protos/generation.py",
    "protos/routing.py",
    "router/request_shaper.py",
    "replica_agent/executors/gpu_profiles.py",
    "replica_agent/executors/cost_model.py",
    "replica_agent/executors/cost_executor.py",
    "replica_agent/executors/output_lengths.py",
]


def core_files() -> list[Path]:
    files = [ROOT / f for f in CORE_FILES if (ROOT / f).exists()]
    for directory in CORE_DIRS:
        files.extend(sorted((ROOT / directory).rglob("*.py")))
    return files


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_sources_import_no_io_framework() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN)
        for path in core_files()
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}


def test_core_modules_pull_in_no_io_framework_transitively() -> None:
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in core_files()
    ]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
