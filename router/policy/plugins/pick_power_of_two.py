"""Picker ``power_of_two``: two distinct candidates drawn at random, the higher total wins (the
first drawn on a tie)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from router.policy.columns import Floats
from router.policy.plugin import CandidateScore


@dataclass(frozen=True, slots=True)
class PowerOfTwoPicker:
    name: ClassVar[str] = "power_of_two"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        index = self.pick_index([s.total for s in scores], rng)
        return None if index is None else scores[index].replica_id

    def pick_index(self, totals: Sequence[float] | Floats, rng: random.Random) -> int | None:
        count = len(totals)
        if count <= 1:
            return 0 if count else None
        first = rng.randrange(count)
        second = rng.randrange(count - 1)
        if second >= first:
            second += 1
        return second if totals[second] > totals[first] else first
