"""Policies a simulation can run: every production policy, plus ``oracle``.

``oracle`` exists only here: it is ``predicted_cost`` routing on the true output length of every
request, the reference a realistic predictor is measured against. The production registry does
not list it, since no deployment knows the true lengths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from router.policy.profile import Profile
from router.policy.registry import build_policy, policy_names


@dataclass(frozen=True, slots=True)
class SimOnlyPolicy:
    base_policy: str
    predictor: str
    description: str


SIM_ONLY_POLICIES: Mapping[str, SimOnlyPolicy] = MappingProxyType(
    {"oracle": SimOnlyPolicy("predicted_cost", "oracle", "predicted_cost with the true output lengths")}
)


def sim_policy_names() -> tuple[str, ...]:
    return (*policy_names(), *SIM_ONLY_POLICIES)


def forced_predictor(name: str) -> str | None:
    """The predictor spec a simulation-only policy imposes (None for production policies)."""
    special = SIM_ONLY_POLICIES.get(name)
    return None if special is None else special.predictor


def build_sim_policy(name: str, params: Mapping[str, object] | None = None) -> Profile:
    """A fresh profile for a production or simulation-only policy, named as asked; ValueError on
    an unknown name or parameter."""
    special = SIM_ONLY_POLICIES.get(name)
    if special is None:
        if name not in policy_names():
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(sim_policy_names())}")
        return build_policy(name, params)
    return replace(build_policy(special.base_policy, params), name=name)
