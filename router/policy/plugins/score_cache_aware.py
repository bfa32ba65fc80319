"""Scorer ``cache_aware``: SGLang's cache-aware routing as one scorer (use it with ``max_score``).

While the load is balanced (in-flight requests differ by at most ``balance_abs_threshold``, or the
busiest replica has at most ``balance_rel_threshold`` times the idlest one's), a request whose
longest prefix match covers at least ``cache_threshold`` of its blocks goes to that replica: the
scores are the match ratios. Otherwise, or once the load is imbalanced, it goes to the least loaded
replica: the scores are the min-max normalised in-flight counts, fewer is better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from protos.routing import RoutingRequest
from router.policy.plugins.score_maps import lower_is_better
from router.policy.plugins.score_prefix import match_ratios
from router.policy.view import ClusterView, ReplicaLoad


def load_is_balanced(loads: Sequence[int], abs_threshold: float, rel_threshold: float) -> bool:
    if not loads:
        return True
    low, high = min(loads), max(loads)
    return high - low <= abs_threshold or high <= rel_threshold * low


@dataclass(frozen=True, slots=True)
class CacheAwareScorer:
    """``cache_threshold`` 0.3, ``balance_abs_threshold`` 64, ``balance_rel_threshold`` 1.5 (SGLang's
    router defaults)."""

    name: ClassVar[str] = "cache_aware"
    cache_threshold: float = 0.3
    balance_abs_threshold: float = 64.0
    balance_rel_threshold: float = 1.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache_aware: cache_threshold must be in [0, 1], got {self.cache_threshold}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError(
                "cache_aware: balance_abs_threshold must be >= 0 and balance_rel_threshold >= 1, got "
                f"{self.balance_abs_threshold} and {self.balance_rel_threshold}"
            )

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        loads = {r.replica_id: r.inflight_requests for r in candidates}
        if load_is_balanced(list(loads.values()), self.balance_abs_threshold, self.balance_rel_threshold):
            ratios = match_ratios(request, candidates, view)
            longest = max(ratios.values(), default=0.0)
            if longest > 0 and longest >= self.cache_threshold:
                return ratios
        return lower_is_better(loads)
