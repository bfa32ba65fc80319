"""Picker ``weighted_random``: a candidate drawn with probability proportional to its total
(uniformly when every total is 0)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from router.policy.plugin import CandidateScore


@dataclass(frozen=True, slots=True)
class WeightedRandomPicker:
    name: ClassVar[str] = "weighted_random"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        if not scores:
            return None
        mass = sum(s.total for s in scores)
        if mass <= 0:
            return scores[rng.randrange(len(scores))].replica_id
        point = rng.random() * mass
        for candidate in scores:
            point -= candidate.total
            if point < 0:
                return candidate.replica_id
        return next(s.replica_id for s in reversed(scores) if s.total > 0)
