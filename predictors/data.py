"""Training data for output-length predictors: JSONL rows, the AlpacaEval converter, prompt splits.

A row is one JSON object per line: ``{"prompt": str, "output_tokens": int}`` plus optional ``model``,
``tenant``, ``max_tokens`` (0 or absent: no limit) and ``prompt_id``. Loading stops at the first
malformed row and names its line.

Token counts: prompts and answers are counted with the project's own tokenizer for the model, as the
router counts prompts (``protos.text``; a model without a configured ``tokenizer.json`` — every
AlpacaEval generator — is counted with :class:`~protos.text.ApproxTokenizer`, whose count does not
depend on the vocabulary). So predicted lengths are in the units the router and engines use.

Splits are by prompt text, never by row: every answer to one prompt lands on the same side.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from predictors.base import PredictorFeatures
from protos.text import ApproxTokenizer

DEFAULT_MODEL = "default"
ALPACA_PROMPTS = "alpaca_eval_prompts.jsonl"
ALPACA_OUTPUTS = "alpaca_eval_outputs_14models.jsonl.gz"


class DataFormatError(ValueError):
    """A data file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class LengthRow:
    prompt: str
    output_tokens: int
    model: str = DEFAULT_MODEL
    tenant: str | None = None
    max_tokens: int = 0
    prompt_id: str | None = None

    @property
    def prompt_key(self) -> str:
        """What identifies the prompt for splitting: a hash of its text."""
        return hashlib.blake2b(self.prompt.encode(), digest_size=12).hexdigest()

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "prompt": self.prompt,
            "output_tokens": self.output_tokens,
            "model": self.model,
        }
        if self.tenant is not None:
            row["tenant"] = self.tenant
        if self.max_tokens:
            row["max_tokens"] = self.max_tokens
        if self.prompt_id is not None:
            row["prompt_id"] = self.prompt_id
        return row


def count_tokens(text: str) -> int:
    """Tokens in ``text`` as the router counts a prompt for a model with no tokenizer file."""
    return ApproxTokenizer().count(text)


def to_features(row: LengthRow) -> PredictorFeatures:
    """What the router would know about this request before routing it."""
    return PredictorFeatures(
        model=row.model,
        prompt_tokens=count_tokens(row.prompt),
        max_tokens=row.max_tokens,
        tenant=row.tenant,
        prompt_text=row.prompt,
    )


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name!r} must be a non-negative integer, got {value!r}")
    return value


def _optional_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{name!r} must be a string, got {value!r}")


def parse_row(data: Any) -> LengthRow:
    """One row from its decoded JSON; ``ValueError`` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("a row must be a JSON object")
    for required in ("prompt", "output_tokens"):
        if required not in data:
            raise ValueError(f"missing {required!r}")
    if not isinstance(data["prompt"], str):
        raise ValueError(f"'prompt' must be a string, got {type(data['prompt']).__name__}")
    prompt_id = data.get("prompt_id")
    if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, str | int)):
        raise ValueError(f"'prompt_id' must be a string or integer, got {prompt_id!r}")
    model = _optional_str(data.get("model"), "model")
    return LengthRow(
        prompt=data["prompt"],
        output_tokens=_non_negative_int(data["output_tokens"], "output_tokens"),
        model=model if model else DEFAULT_MODEL,
        tenant=_optional_str(data.get("tenant"), "tenant"),
        max_tokens=_non_negative_int(data.get("max_tokens") or 0, "max_tokens"),
        prompt_id=None if prompt_id is None else str(prompt_id),
    )


def load_rows(path: Path) -> list[LengthRow]:
    """Every row of a JSONL file (gzipped if it ends in ``.gz``); blank lines are skipped."""
    rows: list[LengthRow] = []
    try:
        with _open_text(path) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(parse_row(json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                except ValueError as error:
                    raise DataFormatError(f"{path}:{number}: {error}") from None
    except OSError as error:
        raise DataFormatError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows


def write_rows(rows: Iterable[LengthRow], path: Path) -> int:
    """Write ``rows`` as JSONL; returns how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(data, dict):
                    raise DataFormatError(f"{path}:{number}: a row must be a JSON object")
                yield number, data


def convert_alpaca_eval(source: Path) -> list[LengthRow]:
    """Rows from the AlpacaEval prompts joined with the 14 models' answers by ``prompt_id``; the
    answer's length is counted with :func:`count_tokens`. Sorted by prompt id, then model."""
    prompts: dict[int, str] = {}
    try:
        for number, data in _json_lines(source / ALPACA_PROMPTS):
            try:
                prompts[int(data["prompt_id"])] = str(data["instruction"])
            except (KeyError, TypeError, ValueError):
                raise DataFormatError(
                    f"{source / ALPACA_PROMPTS}:{number}: needs prompt_id and instruction"
                ) from None
        rows = []
        for number, data in _json_lines(source / ALPACA_OUTPUTS):
            try:
                prompt_id, model, output = int(data["prompt_id"]), str(data["generator"]), str(data["output"])
            except (KeyError, TypeError, ValueError):
                raise DataFormatError(
                    f"{source / ALPACA_OUTPUTS}:{number}: needs prompt_id, generator, output"
                ) from None
            if prompt_id not in prompts:
                raise DataFormatError(f"{source / ALPACA_OUTPUTS}:{number}: unknown prompt_id {prompt_id}")
            rows.append(LengthRow(prompts[prompt_id], count_tokens(output), model, prompt_id=str(prompt_id)))
    except OSError as error:
        raise DataFormatError(f"cannot read {error.filename}: {error.strerror}") from None
    return sorted(rows, key=lambda row: (int(row.prompt_id or 0), row.model))


def split_by_prompt(
    rows: Sequence[LengthRow], test_frac: float, seed: int
) -> tuple[list[LengthRow], list[LengthRow]]:
    """(train, test): a seeded ``test_frac`` of the distinct prompts, with all their rows, is held out.
    Both sides keep the input order."""
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be between 0 and 1, got {test_frac}")
    keys = sorted({row.prompt_key for row in rows})
    if len(keys) < 2:
        raise ValueError(f"need at least two distinct prompts to split, got {len(keys)}")
    random.Random(seed).shuffle(keys)
    held_out = max(1, min(len(keys) - 1, round(test_frac * len(keys))))
    test_keys = set(keys[:held_out])
    train = [row for row in rows if row.prompt_key not in test_keys]
    test = [row for row in rows if row.prompt_key in test_keys]
    return train, test


def summarize(rows: Sequence[LengthRow]) -> dict[str, Any]:
    """Counts for a model's metadata: rows, distinct prompts, rows per model, output-length stats."""
    lengths = sorted(row.output_tokens for row in rows)
    models: dict[str, int] = {}
    for row in rows:
        models[row.model] = models.get(row.model, 0) + 1
    return {
        "rows": len(rows),
        "prompts": len({row.prompt_key for row in rows}),
        "models": dict(sorted(models.items())),
        "output_tokens_mean": round(sum(lengths) / len(lengths), 2) if lengths else 0.0,
        "output_tokens_median": lengths[len(lengths) // 2] if lengths else 0,
    }
