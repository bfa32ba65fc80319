"""The router's state is pure core (DESIGN.md section 2): no I/O framework, directly or transitively."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_core_purity import FORBIDDEN, ROOT, imported_roots

STATE_DIR = ROOT / "router" / "state"


def test_state_sources_import_no_io_framework() -> None:
    offenders = {
        path.name: sorted(imported_roots(path) & FORBIDDEN)
        for path in sorted(STATE_DIR.glob("*.py"))
        if imported_roots(path) & FORBIDDEN
    }
    assert offenders == {}


def test_state_modules_pull_in_no_io_framework_transitively() -> None:
    modules = [
        f"router.state.{path.stem}" for path in sorted(STATE_DIR.glob("*.py")) if path.stem != "__init__"
    ]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(ROOT), capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
