"""Picker ``round_robin``: the candidates in turn, scores ignored.

Its counter is the only state a policy keeps; each profile owns its own picker, so two profiles
rotate independently. When the candidate list changes the rotation continues by position.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from router.policy.plugin import CandidateScore


@dataclass(eq=False, slots=True)
class RoundRobinPicker:
    name: ClassVar[str] = "round_robin"
    _turn: int = field(default=0, init=False, repr=False)

    def pick(self, scores: Sequence[CandidateScore], rng: random.Random) -> str | None:
        if not scores:
            return None
        chosen = scores[self._turn % len(scores)].replica_id
        self._turn += 1
        return chosen
