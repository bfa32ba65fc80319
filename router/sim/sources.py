"""Where a simulation's requests come from: a trace name, a trace file or a ServeGen directory.

Trace names refer to the public traces kept next to the repository, in ``../shared/data/traces/``:

- ``azure2023_conv``: Azure LLM inference trace 2023, conversation service (CSV);
- ``mooncake_conversation``: Mooncake/Kimi conversation trace with 512-token prefix blocks (JSONL);
- ``servegen_deepseek_r1``: ServeGen DeepSeek-R1 client length distributions (Poisson arrivals).

Synthetic workloads are named too: ``poisson`` (Poisson arrivals) and ``gamma:<shape>`` (Gamma
inter-arrival times with that shape: below 1 is burstier than Poisson), at 1 request/s, with
(prompt, output) lengths resampled from ``azure2023_conv``; set their rate with ``--rate`` or
``--load-scale``. ``alpaca_eval`` and ``alpaca_eval:<generator>`` are Poisson arrivals at 1
request/s of AlpacaEval instructions (their text included, for output-length predictors) with the
length of one model's real answer (``Meta-Llama-3.1-8B-Instruct-Turbo`` by default), read from
``../shared/data/prompts/`` (CC BY-NC 4.0: read there, never copied).

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
    load_alpaca_eval,
    load_azure_csv,
    load_generic,
    load_mooncake_jsonl,
    sample_servegen,
)
from router.sim.workloads import TraceLengths, gamma_workload, prompted_workload

SHARED_TRACES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"
SHARED_PROMPTS_DIR = SHARED_TRACES_DIR.parent / "prompts"
ALPACA_EVAL = "alpaca_eval"
DEFAULT_ALPACA_EVAL_GENERATOR = "Meta-Llama-3.1-8B-Instruct-Turbo"
TRACE_FILES: Mapping[str, str] = MappingProxyType(
    {
        "azure2023_conv": "azure2023_conv.csv",
        "mooncake_conversation": "mooncake_conversation_trace.jsonl",
        "servegen_deepseek_r1": "servegen_deepseek_r1",
    }
)
DEFAULT_SERVEGEN_REQUESTS = 1000
DEFAULT_SERVEGEN_RATE_PER_S = 10.0
DEFAULT_SYNTHETIC_REQUESTS = 1000
SYNTHETIC_LENGTHS = "azure2023_conv"
SYNTHETIC_NAMES = ("poisson", "gamma:<shape>", "alpaca_eval[:<generator>]")


def trace_names() -> tuple[str, ...]:
    return (*TRACE_FILES, *SYNTHETIC_NAMES)


def synthetic_shape(name: str) -> float | None:
    """The Gamma shape a synthetic workload name asks for (1 for ``poisson``); None for other names."""
    if name == "poisson":
        return 1.0
    kind, _, value = name.partition(":")
    if kind != "gamma":
        return None
    try:
        shape = float(value)
    except ValueError:
        raise TraceFormatError(f"{name}: gamma:<shape> needs a number, got {value!r}") from None
    if not shape > 0 or shape == float("inf"):
        raise TraceFormatError(f"{name}: the Gamma shape must be positive and finite")
    return shape


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
    """The first ``limit`` requests of a named or given trace, or ``limit`` synthetic ones
    (``DEFAULT_SYNTHETIC_REQUESTS`` without a limit). A ServeGen directory gives
    ``limit`` requests (``DEFAULT_SERVEGEN_REQUESTS`` without one) at Poisson arrivals of
    ``DEFAULT_SERVEGEN_RATE_PER_S`` with lengths from its pooled distributions."""
    name, _, generator = str(name_or_path).partition(":")
    if name == ALPACA_EVAL:
        rows = load_alpaca_eval(SHARED_PROMPTS_DIR, generator or DEFAULT_ALPACA_EVAL_GENERATOR)
        return prompted_workload(rows, 1.0, count=limit or DEFAULT_SYNTHETIC_REQUESTS, seed=seed)
    shape = synthetic_shape(str(name_or_path))
    if shape is not None:
        lengths = TraceLengths(load_trace(SYNTHETIC_LENGTHS))
        return gamma_workload(1.0, shape, lengths, count=limit or DEFAULT_SYNTHETIC_REQUESTS, seed=seed)
    path = resolve_trace(name_or_path)
    if path.is_dir():
        return sample_servegen(path, limit or DEFAULT_SERVEGEN_REQUESTS, DEFAULT_SERVEGEN_RATE_PER_S, seed)
    if path.suffix not in (".csv", ".jsonl"):
        expected = "expected .csv, .jsonl or a ServeGen directory"
        raise TraceFormatError(f"{path}: unknown trace format ({expected})")
    if is_generic(path):
        return load_generic(path, limit)
    return load_azure_csv(path, limit) if path.suffix == ".csv" else load_mooncake_jsonl(path, limit)
