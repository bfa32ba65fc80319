import itertools
from pathlib import Path

import pytest

from protos.block_hash import BlockHasher
from router.sim.traces import (
    TraceFormatError,
    TraceRequest,
    load_azure_csv,
    load_mooncake_jsonl,
    prompt_tokens_for,
    sample_servegen,
    to_specs,
)

SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"


def test_azure_rows_become_requests(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
    )
    rows = load_azure_csv(path)
    assert [(round(r.arrival_s, 4), r.prompt_tokens, r.output_tokens) for r in rows] == [
        (0.0, 374, 44),
        (4.3146, 396, 109),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2023-11-16 18:15:50.99,abc,1", "row 3: ContextTokens is not an integer"),
        ("2023-11-16 18:15:50.99,10,0", "row 3: GeneratedTokens must be positive"),
        ("yesterday,10,3", "row 3: bad or missing TIMESTAMP"),
    ],
)
def test_azure_malformed_rows_name_their_row(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n{line}\n")
    with pytest.raises(TraceFormatError, match=message):
        load_azure_csv(path)


def test_mooncake_malformed_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\nnot json\n')
    with pytest.raises(TraceFormatError, match="line 2"):
        load_mooncake_jsonl(path)


def test_shared_mooncake_prefixes_become_shared_block_hashes() -> None:
    a = TraceRequest(0.0, 1000, 5, (0, 1))
    b = TraceRequest(0.0, 900, 5, (0, 2))
    hasher = BlockHasher(block_size=16)
    ha = hasher.hash_tokens(prompt_tokens_for(0, a))
    hb = hasher.hash_tokens(prompt_tokens_for(1, b))
    assert ha[:32] == hb[:32]  # the shared 512-token block = 32 engine blocks
    assert ha[32] != hb[32]


def test_requests_without_prefix_ids_share_nothing() -> None:
    a = prompt_tokens_for(0, TraceRequest(0.0, 40, 1))
    b = prompt_tokens_for(1, TraceRequest(0.0, 40, 1))
    assert len(a) == 40 and not set(a) & set(b)


def test_to_specs_scales_time_and_carries_lengths() -> None:
    trace = [TraceRequest(2.0, 10, 7), TraceRequest(4.0, 12, 3)]
    specs = list(to_specs(trace, time_scale=0.5, with_prediction=True))
    assert [s.arrival_time for s in specs] == [1.0, 2.0]
    assert [s.params.max_tokens for s in specs] == [7, 3]
    assert [s.predicted_output_tokens for s in specs] == [7, 3]
    assert all(s.params.ignore_eos for s in specs)


@pytest.mark.skipif(not SHARED_TRACES.exists(), reason="shared data not present")
def test_real_traces_load() -> None:
    assert len(load_azure_csv(SHARED_TRACES / "azure2023_conv.csv", limit=100)) == 100
    rows = load_mooncake_jsonl(SHARED_TRACES / "mooncake_conversation_trace.jsonl", limit=50)
    assert rows[0].prefix_ids[0] == 0 and rows[0].prompt_tokens == 6758


def test_servegen_sampling_is_seeded_and_shaped(tmp_path: Path) -> None:
    (tmp_path / "chunk-0-trace.csv").write_text("0,2.0,1.0,Gamma,1,1\n600,0,0,,0,0\n")
    (tmp_path / "chunk-0-dataset.json").write_text(
        '{"0": {"input_tokens": "{10: 0.5, 20: 0.5}", "output_tokens": "{5: 1.0}"},'
        ' "600": {"input_tokens": "{999: 1.0}", "output_tokens": "{999: 1.0}"}}'
    )
    first = sample_servegen(tmp_path, 50, rate_per_s=10.0, seed=3)
    assert first == sample_servegen(tmp_path, 50, rate_per_s=10.0, seed=3)
    assert {r.prompt_tokens for r in first} <= {10, 20}  # the idle window carries no weight
    assert {r.output_tokens for r in first} == {5}
    assert all(b.arrival_s > a.arrival_s for a, b in itertools.pairwise(first))


def test_servegen_directory_without_traffic_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no ServeGen windows"):
        sample_servegen(tmp_path, 5, rate_per_s=1.0)
