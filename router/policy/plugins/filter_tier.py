"""Filter ``tier``: only replicas of one placement tier (``edge`` or ``cloud``).

With ``tier`` left empty the request chooses: its ``extra`` entry ``tier`` (set, for example, by
an edge/cloud bandit) names the tier, and a request without one may go anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad

TIERS = ("edge", "cloud")


@dataclass(frozen=True, slots=True)
class TierFilter:
    """``tier`` (default ``""``: the request's ``extra["tier"]``, if any)."""

    name: ClassVar[str] = "tier"
    tier: str = ""

    def __post_init__(self) -> None:
        if self.tier and self.tier not in TIERS:
            raise ValueError(f"tier: tier must be one of {', '.join(TIERS)} or empty, got {self.tier!r}")

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        tier = self.tier or next((value for key, value in request.extra if key == "tier"), "")
        if not tier:
            return candidates
        return [r for r in candidates if r.tier == tier]
