"""Fan one replica's snapshots out to any number of watchers without ever building a backlog.

A watcher that falls behind gets the newest snapshot, but with the admitted request ids and the
cache events of every snapshot it skipped folded in: a router's in-flight ledger relies on seeing
each admission once, and its prefix index on seeing every cached/evicted block.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Iterable

from protos.snapshot import ReplicaSnapshot


def merge_snapshots(skipped: Iterable[ReplicaSnapshot], latest: ReplicaSnapshot) -> ReplicaSnapshot:
    """``latest`` carrying the admissions and the net cache events of ``skipped`` (oldest first)."""
    admitted: list[str] = []
    last_event: dict[int, bool] = {}  # hash -> cached (True) or evicted (False); the last one wins
    for snapshot in (*skipped, latest):
        admitted.extend(snapshot.admitted_ids)
        for block_hash in snapshot.evicted_hashes:
            last_event.pop(block_hash, None)
            last_event[block_hash] = False
        for block_hash in snapshot.new_cached_hashes:
            last_event.pop(block_hash, None)
            last_event[block_hash] = True
    cached = [h for h, is_cached in last_event.items() if is_cached]
    evicted = [h for h, is_cached in last_event.items() if not is_cached]
    return dataclasses.replace(
        latest,
        admitted_ids=tuple(admitted),
        new_cached_hashes=tuple(cached),
        evicted_hashes=tuple(evicted),
    )


class SnapshotHub:
    """Holds the latest snapshots (a bounded history) and wakes watchers when a new one arrives."""

    def __init__(self, initial: ReplicaSnapshot, history: int = 512) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self._history: deque[ReplicaSnapshot] = deque([initial], maxlen=history)
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def latest(self) -> ReplicaSnapshot:
        return self._history[-1]

    def publish(self, snapshot: ReplicaSnapshot) -> None:
        self._history.append(snapshot)
        self._wake_all()

    def close(self) -> None:
        self._closed = True
        self._wake_all()

    def _wake_all(self) -> None:
        # Watchers wait on the event they captured; a fresh one serves the next round.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def since(self, seq: int) -> ReplicaSnapshot | None:
        """The latest snapshot merged with all newer than ``seq``; None when nothing is newer."""
        newer = [s for s in self._history if s.seq > seq]
        if not newer:
            return None
        return merge_snapshots(newer[:-1], newer[-1]) if len(newer) > 1 else newer[-1]

    async def watch(self, heartbeat_s: float | None = None) -> AsyncIterator[ReplicaSnapshot]:
        """The current snapshot, then each new one (merged when several arrived since the last
        yield); the latest again after ``heartbeat_s`` of silence. Ends when the hub closes."""
        current = self.latest
        yield current
        seen = current.seq
        while not self._closed:
            changed = self._changed
            snapshot = self.since(seen)
            if snapshot is None:
                try:
                    async with asyncio.timeout(heartbeat_s):
                        await changed.wait()
                    continue
                except TimeoutError:
                    snapshot = self.latest
            seen = snapshot.seq
            yield snapshot
