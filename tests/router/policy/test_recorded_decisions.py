"""Every named policy (and a few YAML profiles that use the other plugins) makes the decisions it made
before the policies moved to column arithmetic: the same choice, the same filtered-out replicas and
reason, the same scores (to the ten digits recorded), over seeded sequences of changing views."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.router.policy.decision_cases import RECORDED, decisions_of, profiles

EXPECTED: dict[str, list[dict[str, Any]]] = json.loads(RECORDED.read_text())


def ids(decision: dict[str, Any]) -> list[str]:
    return [score[0] for score in decision["scores"]]


def numbers(decision: dict[str, Any]) -> list[float]:
    """Each candidate's total, then its parts where there are several."""
    flat: list[float] = []
    for score in decision["scores"]:
        flat.append(score[1])
        flat.extend(score[2] if len(score) > 2 else ())
    return flat


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decisions_are_the_recorded_ones(name: str) -> None:
    decisions = decisions_of(profiles()[name])
    expected = EXPECTED[name]
    assert len(decisions) == len(expected)
    for index, (got, want) in enumerate(zip(decisions, expected, strict=True)):
        where = f"{name} decision {index}"
        assert got["replica_id"] == want["replica_id"], where
        assert got["filtered_out"] == want["filtered_out"], where
        assert got["reason"] == want["reason"], where
        assert ids(got) == ids(want), where
        assert numbers(got) == pytest.approx(numbers(want), rel=1e-9, abs=1e-12), where


def test_the_recording_covers_the_cases_that_matter() -> None:
    sal = EXPECTED["sal"]
    assert any(d["replica_id"] is None for d in sal)
    assert any(f[1] == "kv_headroom" for d in sal for f in d["filtered_out"])
    assert len({d["replica_id"] for d in EXPECTED["four_scorers_weighted_random"]}) > 5
