import json
from pathlib import Path

import pytest

from router.sim.sources import load_trace
from router.sim.traces import TraceFormatError, TraceRequest, load_generic


def test_generic_csv_with_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "arrival_s,prompt_tokens,output_tokens,prefix_ids,session,prompt\n"
        '5.0,1024,20,"[1, 2]",s1,hello\n'
        "5.5,600,7,1 3,,\n"
        "7.0,30,1,,s2,\n"
    )
    assert load_trace(path) == [
        TraceRequest(0.0, 1024, 20, (1, 2), "s1", "hello"),
        TraceRequest(0.5, 600, 7, (1, 3)),
        TraceRequest(2.0, 30, 1, (), "s2"),
    ]


def test_generic_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"arrival_s": 0, "prompt_tokens": 10, "output_tokens": 3, "prefix_ids": [4]},
        {"arrival_s": 0.25, "prompt_tokens": 12, "output_tokens": 1, "prompt": "why?"},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert load_trace(path, limit=1) == [TraceRequest(0.0, 10, 3, (4,))]
    assert load_trace(path)[1] == TraceRequest(0.25, 12, 1, prompt="why?")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1.0,,5", "row 3: missing prompt_tokens"),
        ("0.5,10,5", "row 3: arrival_s goes backwards"),
        ("soon,10,5", "row 3: arrival_s is not a number"),
        ("2.0,10,0", "row 3: output_tokens must be positive"),
        ('2.0,10,5,"[1, -2]"', "row 3: prefix_ids must be non-negative"),
    ],
)
def test_malformed_generic_rows_name_their_row(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"arrival_s,prompt_tokens,output_tokens,prefix_ids\n1.0,10,5,\n{row}\n")
    with pytest.raises(TraceFormatError, match=message):
        load_generic(path)


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n[1, 2]\n')
    with pytest.raises(TraceFormatError, match=r"bad\.jsonl line 2: not a JSON object"):
        load_trace(path)
