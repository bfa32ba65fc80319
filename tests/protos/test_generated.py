"""The committed protobuf modules are exactly what ``python -m protos.generate`` writes today."""

from pathlib import Path

from protos.generate import REPO_ROOT, generate, proto_files


def test_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert len(written) == 3 * len(proto_files()) > 0
    stale = [
        path.relative_to(tmp_path).as_posix()
        for path in written
        if (REPO_ROOT / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"regenerate with `python -m protos.generate`: stale {stale}"


def test_snapshot_round_trips_through_protobuf() -> None:
    from protos.snapshot import ReplicaSnapshot, Tier
    from protos.wire import snapshot_from_proto, snapshot_to_proto

    snapshot = ReplicaSnapshot(
        replica_id="r1", model="m", gpu="h100-80gb", tier=Tier.EDGE, seq=7, time=12.5, total_blocks=100,
        free_blocks=40, cached_blocks=10, block_size=16, num_running=3, num_waiting=2,
        waiting_prefill_tokens=900, running_context_tokens=4000, preemptions_total=1,
        prefill_tokens_per_s=1234.5, decode_tokens_per_s=321.0, admitted_ids=("a", "b"), healthy=True,
        draining=True, new_cached_hashes=(2**64 - 1, 5), evicted_hashes=(9,),
    )  # fmt: skip
    assert snapshot_from_proto(snapshot_to_proto(snapshot)) == snapshot
    without_events = snapshot_from_proto(snapshot_to_proto(snapshot, include_cache_events=False))
    assert without_events.new_cached_hashes == () and without_events.evicted_hashes == ()
