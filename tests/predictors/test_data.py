from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from predictors.data import (
    DEFAULT_MODEL,
    DataFormatError,
    LengthRow,
    convert_alpaca_eval,
    count_tokens,
    load_rows,
    split_by_prompt,
    to_features,
    write_rows,
)
from tests.predictors.synthetic import synthetic_rows


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_round_trip_through_jsonl(tmp_path: Path) -> None:
    rows = [
        LengthRow("hello there", 12, "m1", tenant="t", max_tokens=64, prompt_id="7"),
        LengthRow("bye", 0),
    ]
    path = tmp_path / "rows.jsonl"
    assert write_rows(rows, path) == 2
    assert load_rows(path) == rows


def test_optional_fields_take_defaults(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "hi", "output_tokens": 3}', ""])
    (row,) = load_rows(path)
    assert (row.model, row.tenant, row.max_tokens, row.prompt_id) == (DEFAULT_MODEL, None, 0, None)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"output_tokens": 3}', "missing 'prompt'"),
        ('{"prompt": "x"}', "missing 'output_tokens'"),
        ('{"prompt": "x", "output_tokens": -1}', "'output_tokens' must be a non-negative integer"),
        ('{"prompt": "x", "output_tokens": 2.5}', "'output_tokens' must be a non-negative integer"),
        ('{"prompt": 5, "output_tokens": 2}', "'prompt' must be a string"),
        ('{"prompt": "x", "output_tokens": 2, "model": 3}', "'model' must be a string"),
        ('{"prompt": "x", "output_tokens": 2, "max_tokens": true}', "'max_tokens' must be"),
    ],
)
def test_a_malformed_row_is_rejected_with_its_line_number(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "ok", "output_tokens": 1}', "", bad_line])
    with pytest.raises(DataFormatError, match=message) as error:
        load_rows(path)
    assert str(error.value).startswith(f"{path}:3: ")


def test_missing_and_empty_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="cannot read"):
        load_rows(tmp_path / "absent.jsonl")
    with pytest.raises(DataFormatError, match="no rows"):
        load_rows(write_lines(tmp_path / "empty.jsonl", [""]))


def test_split_never_puts_one_prompt_on_both_sides() -> None:
    rows = synthetic_rows(prompts=60)
    train, test = split_by_prompt(rows, 0.25, seed=3)
    assert len(train) + len(test) == len(rows)
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in test})
    assert len({r.prompt for r in test}) == 15
    assert split_by_prompt(rows, 0.25, seed=3) == (train, test)
    assert split_by_prompt(rows, 0.25, seed=4) != (train, test)


def test_split_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="test_frac"):
        split_by_prompt(synthetic_rows(prompts=4), 1.0, seed=0)
    with pytest.raises(ValueError, match="two distinct prompts"):
        split_by_prompt([LengthRow("same", 1, "a"), LengthRow("same", 2, "b")], 0.5, seed=0)


def test_features_count_prompt_tokens_like_the_router() -> None:
    features = to_features(LengthRow("What is paged attention?", 5, "m", tenant="t", max_tokens=9))
    assert features.prompt_tokens == count_tokens("What is paged attention?") > 0
    assert (features.model, features.tenant, features.max_tokens) == ("m", "t", 9)


def test_alpaca_eval_conversion_joins_answers_to_prompts(tmp_path: Path) -> None:
    prompts = [
        {"prompt_id": 0, "dataset": "x", "instruction": "Say hi"},
        {"prompt_id": 1, "instruction": "Count"},
    ]
    (tmp_path / "alpaca_eval_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    answers = [
        {"prompt_id": 1, "generator": "b", "output": "one two three four five"},
        {"prompt_id": 0, "generator": "a", "output": "hi"},
    ]
    with gzip.open(tmp_path / "alpaca_eval_outputs_14models.jsonl.gz", "wt") as out:
        out.writelines(json.dumps(a) + "\n" for a in answers)
    rows = convert_alpaca_eval(tmp_path)
    assert rows == [
        LengthRow("Say hi", count_tokens("hi"), "a", prompt_id="0"),
        LengthRow("Count", count_tokens("one two three four five"), "b", prompt_id="1"),
    ]


def test_alpaca_eval_conversion_names_an_unknown_prompt(tmp_path: Path) -> None:
    (tmp_path / "alpaca_eval_prompts.jsonl").write_text('{"prompt_id": 0, "instruction": "x"}\n')
    with gzip.open(tmp_path / "alpaca_eval_outputs_14models.jsonl.gz", "wt") as out:
        out.write('{"prompt_id": 5, "generator": "a", "output": "y"}\n')
    with pytest.raises(DataFormatError, match=r":1: unknown prompt_id 5"):
        convert_alpaca_eval(tmp_path)
