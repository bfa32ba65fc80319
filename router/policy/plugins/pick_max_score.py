"""Picker ``max_score``: the highest total; equal best totals are broken by the rng."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from router.policy.plugin import CandidateScore

TIE_TOLERANCE = 1e-12  # totals are weighted sums: equal inputs can differ in the last bit


@dataclass(frozen=True, slots=True)
class MaxScorePicker:
    name: ClassVar[str] = "max_score"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        if not scores:
            return None
        totals = [s.total for s in scores]
        threshold = max(totals) - TIE_TOLERANCE
        tied = [s for s, total in zip(scores, totals, strict=True) if total >= threshold]
        return (tied[0] if len(tied) == 1 else tied[rng.randrange(len(tied))]).replica_id
