"""Filter ``staleness``: drop replicas whose last snapshot is older than ``max_staleness_s``.

Unlike ``kv_headroom`` this filter may empty the candidate list: a fleet that has gone silent
is better answered with 503 than routed blind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.view import ClusterView, ReplicaLoad


@dataclass(frozen=True, slots=True)
class StalenessFilter:
    """``max_staleness_s`` (default 2.0): twenty missed snapshots at the usual 100 ms period."""

    name: ClassVar[str] = "staleness"
    max_staleness_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.max_staleness_s > 0:
            raise ValueError(f"staleness: max_staleness_s must be positive, got {self.max_staleness_s}")

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        bound = self.max_staleness_s
        return [r for r in candidates if r.staleness_s <= bound]
