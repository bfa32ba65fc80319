"""Picker ``power_of_two``: two distinct candidates drawn at random, the higher total wins (the
first drawn on a tie)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from router.policy.plugin import CandidateScore


@dataclass(frozen=True, slots=True)
class PowerOfTwoPicker:
    name: ClassVar[str] = "power_of_two"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        count = len(scores)
        if count <= 1:
            return scores[0].replica_id if scores else None
        first = rng.randrange(count)
        second = rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = scores[first], scores[second]
        return b.replica_id if b.total > a.total else a.replica_id
