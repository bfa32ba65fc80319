"""Where a simulation's requests come from: a trace name, a trace file or a ServeGen directory.

Trace names refer to the public traces kept next to the repository, in ``../shared/data/traces/``:

- ``azure2023_conv``: Azure LLM inference trace 2023, conversation service (CSV);
- ``mooncake_conversation``: Mooncake/Kimi conversation trace with 512-token prefix blocks (JSONL);
- ``servegen_deepseek_r1``: ServeGen DeepSeek-R1 client length distributions (Poisson arrivals).

Anything else is taken as a path: an Azure-style or generic ``.csv``, a Mooncake-style or generic
``.jsonl`` (the generic format is recognised by its ``arrival_s`` field), or a ServeGen directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from router.sim.traces import (
    TraceFormatError,
    TraceRequest,
    is_generic,
    load_azure_csv,
    load_generic,
    load_mooncake_jsonl,
    sample_servegen,
)

SHARED_TRACES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"
TRACE_FILES: Mapping[str, str] = MappingProxyType(
    {
        "azure2023_conv": "azure2023_conv.csv",
        "mooncake_conversation": "mooncake_conversation_trace.jsonl",
        "servegen_deepseek_r1": "servegen_deepseek_r1",
    }
)
DEFAULT_SERVEGEN_REQUESTS = 1000
DEFAULT_SERVEGEN_RATE_PER_S = 10.0


def trace_names() -> tuple[str, ...]:
    return tuple(TRACE_FILES)


def resolve_trace(name_or_path: str | Path, traces_dir: Path = SHARED_TRACES_DIR) -> Path:
    """The file or directory a trace name (see the module docstring) or path refers to;
    TraceFormatError when it is neither a known name nor an existing path."""
    file_name = TRACE_FILES.get(str(name_or_path))
    path = traces_dir / file_name if file_name is not None else Path(name_or_path)
    if not path.exists():
        known = ", ".join(TRACE_FILES)
        raise TraceFormatError(f"{name_or_path}: no such trace file, and not a trace name ({known})")
    return path


def load_trace(name_or_path: str | Path, limit: int | None = None, seed: int = 0) -> list[TraceRequest]:
    """The first ``limit`` requests of a named or given trace. A ServeGen directory gives
    ``limit`` requests (``DEFAULT_SERVEGEN_REQUESTS`` without one) at Poisson arrivals of
    ``DEFAULT_SERVEGEN_RATE_PER_S`` with lengths from its pooled distributions."""
    path = resolve_trace(name_or_path)
    if path.is_dir():
        return sample_servegen(path, limit or DEFAULT_SERVEGEN_REQUESTS, DEFAULT_SERVEGEN_RATE_PER_S, seed)
    if path.suffix not in (".csv", ".jsonl"):
        expected = "expected .csv, .jsonl or a ServeGen directory"
        raise TraceFormatError(f"{path}: unknown trace format ({expected})")
    if is_generic(path):
        return load_generic(path, limit)
    return load_azure_csv(path, limit) if path.suffix == ".csv" else load_mooncake_jsonl(path, limit)
