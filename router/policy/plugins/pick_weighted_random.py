"""Picker ``weighted_random``: a candidate drawn with probability proportional to its total
(uniformly when every total is 0)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from router.policy.columns import Floats
from router.policy.plugin import CandidateScore


@dataclass(frozen=True, slots=True)
class WeightedRandomPicker:
    name: ClassVar[str] = "weighted_random"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        index = self.pick_index([s.total for s in scores], rng)
        return None if index is None else scores[index].replica_id

    def pick_index(self, totals: Sequence[float] | Floats, rng: random.Random) -> int | None:
        values: list[float] = totals.tolist() if isinstance(totals, np.ndarray) else list(totals)
        if not values:
            return None
        mass = sum(values)  # in order, one by one, as the walk below subtracts
        if mass <= 0:
            return rng.randrange(len(values))
        point = rng.random() * mass
        for index, total in enumerate(values):
            point -= total
            if point < 0:
                return index
        return next(i for i in range(len(values) - 1, -1, -1) if values[i] > 0)
