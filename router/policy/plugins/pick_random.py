"""Picker ``random``: uniform over the candidates, scores ignored."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from router.policy.plugin import CandidateScore


@dataclass(frozen=True, slots=True)
class RandomPicker:
    name: ClassVar[str] = "random"

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        if not scores:
            return None
        return scores[rng.randrange(len(scores))].replica_id
