"""The router's in-flight ledger (DESIGN.md section 5, step 4).

When the router sends a request to a replica it adds an entry at once, so the very next decision
already sees the request's tokens and blocks as *pending* on that replica. The replica's next
snapshot lists the request id in ``admitted_ids``; the entry is then *acknowledged*: the snapshot
counts the request from now on, so the entry's pending contribution is dropped, but the request
stays in the replica's in-flight count until it is released (finished, aborted or failed). An entry
that no snapshot acknowledges within ``ack_timeout_s`` stops counting as pending (the replica
probably refused or lost it) and stays in flight until released.

Every operation updates running per-replica sums in O(1) (``expire`` is amortised O(1) per entry);
nothing ever re-scans the entries. ``now`` must not go backwards between calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

DEFAULT_ACK_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PendingLoad:
    """Work the router has sent to a replica that the replica's snapshots do not count yet."""

    requests: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    blocks: int = 0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One request the router has open on ``replica_id``.

    ``uncached_prompt_tokens`` (the prompt less its prefix-cache hit) is what the replica must
    prefill, so that is what counts as pending prefill work; ``prompt_tokens`` is kept for reporting.
    """

    request_id: str
    replica_id: str
    prompt_tokens: int
    uncached_prompt_tokens: int
    predicted_decode_tokens: int
    blocks: int
    added_at: float
    pending: bool = True


@dataclass(slots=True)
class _Totals:
    inflight: int = 0
    requests: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    blocks: int = 0

    def count_pending(self, entry: LedgerEntry, sign: int) -> None:
        self.requests += sign
        self.prefill_tokens += sign * entry.uncached_prompt_tokens
        self.decode_tokens += sign * entry.predicted_decode_tokens
        self.blocks += sign * entry.blocks


class InFlightLedger:
    """Requests in flight per replica, with the not-yet-acknowledged part counted as pending load."""

    def __init__(self, ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> None:
        if not ack_timeout_s > 0:
            raise ValueError(f"ack_timeout_s must be positive, got {ack_timeout_s}")
        self.ack_timeout_s = ack_timeout_s
        self._entries: dict[str, LedgerEntry] = {}
        self._totals: dict[str, _Totals] = {}
        # Pending request ids in the order they were added, hence in order of ack deadline.
        self._unacked: OrderedDict[str, None] = OrderedDict()
        self._version = 0

    @property
    def version(self) -> int:
        """Increases whenever any aggregate changes."""
        return self._version

    def add(
        self,
        replica_id: str,
        request_id: str,
        prompt_tokens: int,
        uncached_prompt_tokens: int,
        predicted_decode_tokens: int,
        blocks: int,
        now: float,
    ) -> LedgerEntry:
        """Record that ``request_id`` was just sent to ``replica_id``; it counts as pending at once.

        Raises ValueError for negative counts, more uncached than prompt tokens, or an id that is
        already in flight (release it first when retrying elsewhere).
        """
        _check_counts(prompt_tokens, uncached_prompt_tokens, predicted_decode_tokens, blocks)
        if request_id in self._entries:
            raise ValueError(f"request {request_id!r} is already in flight")
        entry = LedgerEntry(
            request_id,
            replica_id,
            prompt_tokens,
            uncached_prompt_tokens,
            predicted_decode_tokens,
            blocks,
            now,
        )
        self._entries[request_id] = entry
        totals = self._totals.setdefault(replica_id, _Totals())
        totals.inflight += 1
        totals.count_pending(entry, +1)
        self._unacked[request_id] = None
        self._version += 1
        return entry

    def acknowledge(self, replica_id: str, request_ids: Iterable[str]) -> int:
        """Fold the entries a snapshot of ``replica_id`` admitted into it; returns how many were pending.

        Ids the ledger does not know (another router's requests) or that belong to another replica
        are ignored, and acknowledging twice changes nothing.
        """
        folded = 0
        for request_id in request_ids:
            entry = self._entries.get(request_id)
            if entry is None or entry.replica_id != replica_id or not entry.pending:
                continue
            self._stop_pending(entry)
            folded += 1
        return folded

    def release(self, request_id: str) -> LedgerEntry | None:
        """Forget ``request_id`` entirely (finished, aborted, failed); a no-op for unknown ids."""
        entry = self._entries.pop(request_id, None)
        if entry is None:
            return None
        totals = self._totals[entry.replica_id]
        if entry.pending:
            totals.count_pending(entry, -1)
            del self._unacked[request_id]
        totals.inflight -= 1
        if totals.inflight == 0:
            del self._totals[entry.replica_id]
        self._version += 1
        return entry

    def expire(self, now: float) -> set[str]:
        """Stop counting as pending every entry unacknowledged for ``ack_timeout_s``; returns the
        replicas whose pending load changed."""
        deadline = now - self.ack_timeout_s
        changed: set[str] = set()
        while self._unacked:
            request_id = next(iter(self._unacked))
            entry = self._entries[request_id]
            if entry.added_at > deadline:
                break
            self._stop_pending(entry)
            changed.add(entry.replica_id)
        return changed

    def pending(self, replica_id: str) -> PendingLoad:
        totals = self._totals.get(replica_id)
        if totals is None:
            return PendingLoad()
        return PendingLoad(totals.requests, totals.prefill_tokens, totals.decode_tokens, totals.blocks)

    def inflight(self, replica_id: str) -> int:
        totals = self._totals.get(replica_id)
        return 0 if totals is None else totals.inflight

    def entry(self, request_id: str) -> LedgerEntry | None:
        return self._entries.get(request_id)

    def entries(self) -> Iterator[LedgerEntry]:
        return iter(tuple(self._entries.values()))

    def replica_ids(self) -> tuple[str, ...]:
        """Replicas with at least one request in flight."""
        return tuple(self._totals)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def _stop_pending(self, entry: LedgerEntry) -> None:
        self._totals[entry.replica_id].count_pending(entry, -1)
        self._entries[entry.request_id] = replace(entry, pending=False)
        del self._unacked[entry.request_id]
        self._version += 1


def _check_counts(prompt: int, uncached: int, decode: int, blocks: int) -> None:
    if min(prompt, uncached, decode, blocks) < 0:
        raise ValueError(
            f"token and block counts must be non-negative, got prompt={prompt} uncached={uncached} "
            f"decode={decode} blocks={blocks}"
        )
    if uncached > prompt:
        raise ValueError(f"uncached_prompt_tokens ({uncached}) exceeds prompt_tokens ({prompt})")
