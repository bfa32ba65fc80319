import asyncio
import dataclasses

from protos.snapshot import ReplicaSnapshot, Tier
from replica_agent.service.snapshot_hub import SnapshotHub, merge_snapshots


def snap(
    seq: int, admitted: tuple[str, ...] = (), cached: tuple[int, ...] = (), evicted: tuple[int, ...] = ()
):
    return ReplicaSnapshot(
        replica_id="r", model="m", gpu="g", tier=Tier.CLOUD, seq=seq, time=float(seq), total_blocks=10,
        free_blocks=10 - seq % 10, cached_blocks=0, block_size=16, num_running=seq, num_waiting=0,
        waiting_prefill_tokens=0, running_context_tokens=0, preemptions_total=0, prefill_tokens_per_s=0.0,
        decode_tokens_per_s=0.0, admitted_ids=admitted, new_cached_hashes=cached, evicted_hashes=evicted,
    )  # fmt: skip


def test_merge_keeps_every_admission_and_the_last_cache_event_per_hash() -> None:
    merged = merge_snapshots(
        [snap(1, ("a",), cached=(1, 2)), snap(2, ("b",), evicted=(1, 3))], snap(3, ("c",), cached=(3,))
    )
    assert merged.seq == 3 and merged.num_running == 3
    assert merged.admitted_ids == ("a", "b", "c")
    assert set(merged.new_cached_hashes) == {2, 3}
    assert merged.evicted_hashes == (1,)


def test_a_slow_watcher_gets_the_newest_snapshot_with_skipped_admissions_folded_in() -> None:
    async def body() -> None:
        hub = SnapshotHub(snap(0))
        watcher = hub.watch(heartbeat_s=10.0)
        assert (await anext(watcher)).seq == 0
        for seq in range(1, 6):
            hub.publish(snap(seq, (f"r{seq}",)))
        got = await asyncio.wait_for(anext(watcher), 1.0)
        assert got.seq == 5
        assert got.admitted_ids == ("r1", "r2", "r3", "r4", "r5")
        hub.publish(snap(6, ("r6",)))
        got = await asyncio.wait_for(anext(watcher), 1.0)
        assert got.seq == 6 and got.admitted_ids == ("r6",)

    asyncio.run(body())


def test_watchers_wake_on_publish_and_heartbeat_in_silence() -> None:
    async def body() -> None:
        hub = SnapshotHub(snap(0))
        fast, idle = hub.watch(heartbeat_s=10.0), hub.watch(heartbeat_s=0.02)
        await anext(fast)
        await anext(idle)
        assert (await asyncio.wait_for(anext(idle), 1.0)).seq == 0  # heartbeat repeats the latest
        waiter = asyncio.ensure_future(anext(fast))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        hub.publish(snap(1))
        assert (await asyncio.wait_for(waiter, 1.0)).seq == 1
        hub.close()
        assert [s async for s in fast] == []

    asyncio.run(body())


def test_history_bound_keeps_memory_flat() -> None:
    hub = SnapshotHub(snap(0), history=4)
    for seq in range(1, 100):
        hub.publish(dataclasses.replace(snap(seq), admitted_ids=("x",)))
    merged = hub.since(0)
    assert merged is not None and merged.seq == 99 and len(merged.admitted_ids) == 4
