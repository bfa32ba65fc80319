"""Production request traces: loaders and the mapping of their tokens onto engine requests.

Traces carry token *counts*, not text. Prompts are synthesised so that the engine's block hashes
see exactly the sharing the trace records: Mooncake's ``hash_ids`` name 512-token prefix blocks,
so block id ``h`` becomes the tokens ``h*512 .. h*512+511`` and two requests share a cached
prefix exactly when they share leading hash ids. Traces without prefix ids get disjoint tokens.
"""

from __future__ import annotations

import ast
import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from predictors.data import DataFormatError, convert_alpaca_eval, count_tokens
from replica_agent.engine.request import RequestSpec, SamplingParams

MOONCAKE_BLOCK_TOKENS = 512
_DISJOINT_STRIDE = 1 << 17  # room for any single prompt; keeps token ids below 2**32


class TraceFormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_ids: tuple[int, ...] = ()
    session: str | None = None
    prompt: str | None = None


def _positive(value: str | int, what: str, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TraceFormatError(f"{where}: {what} is not an integer: {value!r}") from None
    if number <= 0:
        raise TraceFormatError(f"{where}: {what} must be positive, got {number}")
    return number


def load_azure_csv(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Azure LLM inference trace 2023: ``TIMESTAMP, ContextTokens, GeneratedTokens``."""
    rows: list[TraceRequest] = []
    start: datetime | None = None
    with path.open(newline="") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            where = f"{path.name} row {line_no}"
            try:
                stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            except (KeyError, TypeError, ValueError):
                raise TraceFormatError(f"{where}: bad or missing TIMESTAMP") from None
            start = start or stamp
            rows.append(
                TraceRequest(
                    arrival_s=(stamp - start).total_seconds(),
                    prompt_tokens=_positive(row.get("ContextTokens", ""), "ContextTokens", where),
                    output_tokens=_positive(row.get("GeneratedTokens", ""), "GeneratedTokens", where),
                )
            )
            if limit is not None and len(rows) >= limit:
                break
    return rows


def load_mooncake_jsonl(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Mooncake trace: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``."""
    rows: list[TraceRequest] = []
    with path.open() as handle:
        for line_no, line in enumerate(handle, start=1):
            where = f"{path.name} line {line_no}"
            try:
                item = json.loads(line)
                stamp_ms = float(item["timestamp"])
                hash_ids = tuple(int(h) for h in item.get("hash_ids", ()))
            except (ValueError, KeyError, TypeError):
                raise TraceFormatError(f"{where}: not a Mooncake record") from None
            rows.append(
                TraceRequest(
                    arrival_s=stamp_ms / 1000.0,
                    prompt_tokens=_positive(item.get("input_length"), "input_length", where),
                    output_tokens=_positive(item.get("output_length"), "output_length", where),
                    prefix_ids=hash_ids,
                )
            )
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _window_rates(trace_csv: Path) -> dict[str, float]:
    rates: dict[str, float] = {}
    with trace_csv.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            try:
                rates[str(int(float(row[0])))] = float(row[1])
            except (IndexError, ValueError):
                raise TraceFormatError(f"{trace_csv.name} row {line_no}: not a ServeGen window") from None
    return rates


def servegen_length_pmfs(directory: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Input- and output-length distributions pooled over every ServeGen client and window,
    each window weighted by its request rate."""
    pooled: tuple[dict[int, float], dict[int, float]] = ({}, {})
    for dataset in sorted(directory.glob("chunk-*-dataset.json")):
        rates = _window_rates(dataset.with_name(dataset.name.replace("-dataset.json", "-trace.csv")))
        for window, fields in json.loads(dataset.read_text()).items():
            weight = rates.get(window, 0.0)
            if weight <= 0:
                continue
            for target, field in zip(pooled, ("input_tokens", "output_tokens"), strict=True):
                try:
                    pmf = ast.literal_eval(fields[field])
                except (KeyError, ValueError, SyntaxError):
                    raise TraceFormatError(f"{dataset.name} window {window}: bad {field}") from None
                for tokens, probability in pmf.items():
                    target[int(tokens)] = target.get(int(tokens), 0.0) + weight * float(probability)
    if not pooled[0] or not pooled[1]:
        raise TraceFormatError(f"no ServeGen windows with traffic under {directory}")
    return pooled


def sample_servegen(
    directory: Path, num_requests: int, rate_per_s: float, seed: int = 0
) -> list[TraceRequest]:
    """Poisson arrivals at ``rate_per_s`` with lengths drawn from the pooled ServeGen distributions."""
    rng = np.random.default_rng(seed)
    drawn = []
    for pmf in servegen_length_pmfs(directory):
        values = np.fromiter(pmf.keys(), dtype=np.int64)
        weights = np.fromiter(pmf.values(), dtype=float)
        drawn.append(rng.choice(values, size=num_requests, p=weights / weights.sum()))
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=num_requests))
    return [
        TraceRequest(float(t), max(1, int(i)), max(1, int(o)))
        for t, i, o in zip(arrivals, drawn[0], drawn[1], strict=True)
    ]


def load_alpaca_eval(prompts_dir: Path, generator: str) -> list[TraceRequest]:
    """AlpacaEval instructions with the length of ``generator``'s real answer to each, counted as
    predictor training data counts them (:mod:`predictors.data`), all arriving at 0."""
    try:
        rows = convert_alpaca_eval(prompts_dir)
    except DataFormatError as error:
        raise TraceFormatError(str(error)) from None
    chosen = [row for row in rows if row.model == generator]
    if not chosen:
        known = ", ".join(sorted({row.model for row in rows}))
        raise TraceFormatError(f"no AlpacaEval answers from generator {generator!r} (known: {known})")
    return [
        TraceRequest(0.0, max(1, count_tokens(row.prompt)), max(1, row.output_tokens), prompt=row.prompt)
        for row in chosen
    ]


def prompt_tokens_for(index: int, request: TraceRequest) -> tuple[int, ...]:
    if not request.prefix_ids:
        base = index * _DISJOINT_STRIDE
        return tuple(range(base, base + min(request.prompt_tokens, _DISJOINT_STRIDE)))
    tokens: list[int] = []
    for block_id in request.prefix_ids:
        base = block_id * MOONCAKE_BLOCK_TOKENS
        tokens.extend(range(base, base + MOONCAKE_BLOCK_TOKENS))
    return tuple(tokens[: request.prompt_tokens])


def to_specs(
    trace: Sequence[TraceRequest],
    time_scale: float = 1.0,
    max_prompt_tokens: int | None = None,
    with_prediction: bool = False,
    id_prefix: str = "req",
) -> Iterator[RequestSpec]:
    """Engine requests for a trace, built lazily (prompts are large). ``time_scale`` < 1 compresses
    inter-arrival times (more load). Every answer runs to the trace's length (``ignore_eos``)."""
    for index, request in enumerate(trace):
        prompt = prompt_tokens_for(index, request)
        if max_prompt_tokens is not None:
            prompt = prompt[:max_prompt_tokens]
        yield RequestSpec(
            request_id=f"{id_prefix}-{index}",
            prompt_token_ids=prompt,
            arrival_time=request.arrival_s * time_scale,
            params=SamplingParams(max_tokens=request.output_tokens, ignore_eos=True),
            predicted_output_tokens=request.output_tokens if with_prediction else None,
        )


def prompt_texts(trace: Sequence[TraceRequest], id_prefix: str = "req") -> dict[str, str]:
    """The prompt text of each request of ``trace`` that has one, by the id :func:`to_specs` gives it."""
    return {f"{id_prefix}-{index}": r.prompt for index, r in enumerate(trace) if r.prompt is not None}


GENERIC_REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens")


def load_generic(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """The generic trace format, as CSV (with a header) or JSON lines, one request per row.

    Required: ``arrival_s`` (seconds from any origin, non-decreasing), ``prompt_tokens`` and
    ``output_tokens`` (positive integers). Optional: ``prefix_ids`` (shared 512-token prompt blocks,
    as Mooncake's ``hash_ids``: a JSON list in JSONL; in CSV a JSON list or ids separated by spaces
    or semicolons), ``session`` (any string) and ``prompt`` (the text, if known). Arrivals are
    shifted so the first request arrives at 0. A malformed row raises TraceFormatError naming its
    row (CSV: the file's line number; JSONL: the line number).
    """
    rows: list[TraceRequest] = []
    for where, item in _generic_items(path):
        request = _generic_row(item, where)
        if rows and request.arrival_s < rows[-1].arrival_s:
            raise TraceFormatError(f"{where}: arrival_s goes backwards ({request.arrival_s})")
        rows.append(request)
        if limit is not None and len(rows) >= limit:
            break
    if rows and rows[0].arrival_s != 0.0:
        start = rows[0].arrival_s
        rows = [replace(row, arrival_s=row.arrival_s - start) for row in rows]
    return rows


def is_generic(path: Path) -> bool:
    """Whether a ``.csv`` or ``.jsonl`` file is in the generic format (its first row names ``arrival_s``)."""
    with path.open(newline="") as handle:
        first = handle.readline()
    if path.suffix == ".jsonl":
        try:
            item = json.loads(first)
        except ValueError:
            return False
        return isinstance(item, dict) and "arrival_s" in item
    return "arrival_s" in next(csv.reader([first]), [])


def _generic_items(path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    with path.open(newline="") as handle:
        if path.suffix != ".jsonl":
            for line_no, row in enumerate(csv.DictReader(handle), start=2):
                yield f"{path.name} row {line_no}", dict(row)
            return
        for line_no, line in enumerate(handle, start=1):
            where = f"{path.name} line {line_no}"
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise TraceFormatError(f"{where}: not JSON") from None
            if not isinstance(item, dict):
                raise TraceFormatError(f"{where}: not a JSON object")
            yield where, item


def _generic_row(item: dict[str, object], where: str) -> TraceRequest:
    missing = [name for name in GENERIC_REQUIRED if item.get(name) in (None, "")]
    if missing:
        raise TraceFormatError(f"{where}: missing {', '.join(missing)}")
    try:
        arrival_s = float(str(item["arrival_s"]))
    except ValueError:
        raise TraceFormatError(f"{where}: arrival_s is not a number: {item['arrival_s']!r}") from None
    if not math.isfinite(arrival_s) or arrival_s < 0:
        raise TraceFormatError(f"{where}: arrival_s must be finite and non-negative, got {arrival_s}")
    session, prompt = item.get("session"), item.get("prompt")
    return TraceRequest(
        arrival_s=arrival_s,
        prompt_tokens=_positive(_as_int_text(item["prompt_tokens"]), "prompt_tokens", where),
        output_tokens=_positive(_as_int_text(item["output_tokens"]), "output_tokens", where),
        prefix_ids=_prefix_ids(item.get("prefix_ids"), where),
        session=None if session in (None, "") else str(session),
        prompt=None if prompt in (None, "") else str(prompt),
    )


def _as_int_text(value: object) -> str | int:
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _prefix_ids(value: object, where: str) -> tuple[int, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.replace(";", " ").split()
        except ValueError:
            raise TraceFormatError(f"{where}: prefix_ids is not a JSON list: {text!r}") from None
    if not isinstance(value, list):
        raise TraceFormatError(f"{where}: prefix_ids must be a list of integers")
    try:
        ids = tuple(int(v) for v in value if not isinstance(v, bool | float))
    except (TypeError, ValueError):
        raise TraceFormatError(f"{where}: prefix_ids must be a list of integers") from None
    if len(ids) != len(value) or any(i < 0 for i in ids):
        raise TraceFormatError(f"{where}: prefix_ids must be non-negative integers")
    return ids
