from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from router.state.ledger import InFlightLedger, PendingLoad


def add(
    ledger: InFlightLedger, request_id: str, replica: str = "r1", now: float = 0.0, **counts: int
) -> None:
    ledger.add(
        replica,
        request_id,
        counts.get("prompt", 100),
        counts.get("uncached", 80),
        counts.get("decode", 50),
        counts.get("blocks", 10),
        now,
    )


def test_added_request_counts_as_pending_at_once() -> None:
    ledger = InFlightLedger()
    add(ledger, "a")
    add(ledger, "b", prompt=40, uncached=40, decode=10, blocks=3)
    assert ledger.pending("r1") == PendingLoad(requests=2, prefill_tokens=120, decode_tokens=60, blocks=13)
    assert ledger.inflight("r1") == 2
    assert ledger.pending("r2") == PendingLoad() and ledger.inflight("r2") == 0


def test_ack_folds_entry_into_snapshot_but_keeps_it_in_flight() -> None:
    ledger = InFlightLedger()
    add(ledger, "a")
    add(ledger, "b")
    assert ledger.acknowledge("r1", ["a", "unknown"]) == 1
    assert ledger.pending("r1") == PendingLoad(1, 80, 50, 10)
    assert ledger.inflight("r1") == 2
    entry = ledger.entry("a")
    assert entry is not None and not entry.pending


def test_ack_twice_or_from_another_replica_changes_nothing() -> None:
    ledger = InFlightLedger()
    add(ledger, "a")
    assert ledger.acknowledge("r2", ["a"]) == 0
    assert ledger.pending("r1").requests == 1
    ledger.acknowledge("r1", ["a"])
    version = ledger.version
    assert ledger.acknowledge("r1", ["a"]) == 0
    assert ledger.pending("r1") == PendingLoad() and ledger.version == version


def test_release_before_ack_drops_pending_and_inflight() -> None:
    ledger = InFlightLedger()
    add(ledger, "a")
    released = ledger.release("a")
    assert released is not None and released.request_id == "a"
    assert ledger.pending("r1") == PendingLoad() and ledger.inflight("r1") == 0
    assert ledger.replica_ids() == ()


def test_release_is_idempotent_and_ignores_unknown_ids() -> None:
    ledger = InFlightLedger()
    add(ledger, "a")
    ledger.acknowledge("r1", ["a"])
    assert ledger.release("a") is not None
    assert ledger.release("a") is None
    assert ledger.release("never") is None
    assert len(ledger) == 0 and ledger.inflight("r1") == 0


def test_unacknowledged_entry_stops_being_pending_after_timeout() -> None:
    ledger = InFlightLedger(ack_timeout_s=5.0)
    add(ledger, "a", now=0.0)
    add(ledger, "b", now=2.0, replica="r2")
    assert ledger.expire(4.9) == set()
    assert ledger.expire(5.0) == {"r1"}
    assert ledger.pending("r1") == PendingLoad() and ledger.inflight("r1") == 1
    assert ledger.pending("r2").requests == 1
    assert ledger.expire(7.0) == {"r2"}
    assert "a" in ledger and ledger.release("a") is not None


def test_ack_after_expiry_does_not_double_subtract() -> None:
    ledger = InFlightLedger(ack_timeout_s=1.0)
    add(ledger, "a", now=0.0)
    ledger.expire(2.0)
    assert ledger.acknowledge("r1", ["a"]) == 0
    assert ledger.pending("r1") == PendingLoad()


def test_acknowledged_entry_never_expires_again() -> None:
    ledger = InFlightLedger(ack_timeout_s=1.0)
    add(ledger, "a", now=0.0)
    ledger.acknowledge("r1", ["a"])
    assert ledger.expire(10.0) == set()
    assert ledger.inflight("r1") == 1


@pytest.mark.parametrize(
    "counts",
    [
        {"prompt": -1},
        {"uncached": -1, "prompt": 0},
        {"decode": -5},
        {"blocks": -1},
        {"prompt": 10, "uncached": 11},
    ],
)
def test_rejects_invalid_counts(counts: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        add(InFlightLedger(), "a", **counts)


def test_rejects_duplicate_request_id() -> None:
    ledger = InFlightLedger()
    add(ledger, "a")
    with pytest.raises(ValueError, match="already in flight"):
        add(ledger, "a", replica="r2")


def test_rejects_non_positive_timeout() -> None:
    with pytest.raises(ValueError):
        InFlightLedger(ack_timeout_s=0.0)


REPLICAS = ("r1", "r2", "r3")


class LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of add / ack / release / expire against a recomputation from entries."""

    added = Bundle("added")

    def __init__(self) -> None:
        super().__init__()
        self.ledger = InFlightLedger(ack_timeout_s=3.0)
        self.now = 0.0
        self.next_id = 0

    @rule(
        target=added,
        replica=st.sampled_from(REPLICAS),
        prompt=st.integers(0, 5000),
        cached_fraction=st.floats(0.0, 1.0),
        decode=st.integers(0, 2000),
        blocks=st.integers(0, 400),
    )
    def add(self, replica: str, prompt: int, cached_fraction: float, decode: int, blocks: int) -> str:
        request_id = f"q{self.next_id}"
        self.next_id += 1
        uncached = int(prompt * (1.0 - cached_fraction))
        self.ledger.add(replica, request_id, prompt, uncached, decode, blocks, self.now)
        return request_id

    @rule(request_id=added, replica=st.sampled_from(REPLICAS))
    def acknowledge(self, request_id: str, replica: str) -> None:
        self.ledger.acknowledge(replica, [request_id])

    @rule(request_id=consumes(added))
    def release(self, request_id: str) -> None:
        self.ledger.release(request_id)
        assert request_id not in self.ledger

    @rule(request_id=added)
    def release_twice(self, request_id: str) -> None:
        self.ledger.release(request_id)
        self.ledger.release(request_id)

    @rule(step=st.floats(0.0, 4.0))
    def advance_and_expire(self, step: float) -> None:
        self.now += step
        self.ledger.expire(self.now)

    @invariant()
    def aggregates_match_entries(self) -> None:
        entries = list(self.ledger.entries())
        for replica in REPLICAS:
            mine = [e for e in entries if e.replica_id == replica]
            pending = [e for e in mine if e.pending]
            expected = PendingLoad(
                len(pending),
                sum(e.uncached_prompt_tokens for e in pending),
                sum(e.predicted_decode_tokens for e in pending),
                sum(e.blocks for e in pending),
            )
            got = self.ledger.pending(replica)
            assert got == expected
            assert min(got.requests, got.prefill_tokens, got.decode_tokens, got.blocks) >= 0
            assert self.ledger.inflight(replica) == len(mine)

    @invariant()
    def no_pending_entry_outlives_its_timeout(self) -> None:
        for entry in self.ledger.entries():
            if entry.pending:
                assert entry.added_at > self.now - self.ledger.ack_timeout_s or entry.added_at == self.now

    def teardown(self) -> None:
        for entry in list(self.ledger.entries()):
            self.ledger.release(entry.request_id)
        for replica in REPLICAS:
            assert self.ledger.pending(replica) == PendingLoad()
            assert self.ledger.inflight(replica) == 0
        assert len(self.ledger) == 0 and self.ledger.replica_ids() == ()


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestLedgerProperties = LedgerMachine.TestCase
