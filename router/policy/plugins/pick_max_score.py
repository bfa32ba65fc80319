"""Picker ``max_score``: the highest total; equal best totals are broken by the rng."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from router.policy.columns import Floats
from router.policy.plugin import CandidateScore

TIE_TOLERANCE = 1e-12  # totals are weighted sums: equal inputs can differ in the last bit


@dataclass(frozen=True, slots=True)
class MaxScorePicker:
    name: ClassVar[str] = "max_score"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        index = self.pick_index(np.array([s.total for s in scores], dtype=np.float64), rng)
        return None if index is None else scores[index].replica_id

    def pick_index(self, totals: Floats, rng: random.Random) -> int | None:
        if not len(totals):
            return None
        best = int(totals.argmax())
        tied = totals >= totals[best] - TIE_TOLERANCE
        count = int(np.count_nonzero(tied))
        return best if count == 1 else int(np.flatnonzero(tied)[rng.randrange(count)])
