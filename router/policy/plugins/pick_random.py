"""Picker ``random``: uniform over the candidates, scores ignored."""

from __future__ import annotations

import random
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import ClassVar

from router.policy.plugin import CandidateScore


@dataclass(frozen=True, slots=True)
class RandomPicker:
    name: ClassVar[str] = "random"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        index = self.pick_index(scores, rng)
        return None if index is None else scores[index].replica_id

    def pick_index(self, totals: Sized, rng: random.Random) -> int | None:
        return rng.randrange(len(totals)) if len(totals) else None
