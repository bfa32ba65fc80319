"""Picker ``round_robin``: the candidates in turn, scores ignored.

Its counter is the only state a policy keeps; each profile owns its own picker, so two profiles
rotate independently. When the candidate list changes the rotation continues by position.
"""

from __future__ import annotations

import random
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import ClassVar

from router.policy.plugin import CandidateScore


@dataclass(eq=False, slots=True)
class RoundRobinPicker:
    name: ClassVar[str] = "round_robin"
    _turn: int = field(default=0, init=False, repr=False)

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        index = self.pick_index(scores, rng)
        return None if index is None else scores[index].replica_id

    def pick_index(self, totals: Sized, rng: random.Random) -> int | None:
        if not len(totals):
            return None
        chosen = self._turn % len(totals)
        self._turn += 1
        return chosen
