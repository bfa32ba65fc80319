"""Every filter, scorer and picker by name, and building one from user-given parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from router.policy.params import checked_params, parameter_defaults
from router.policy.plugin import Filter, Picker, Scorer
from router.policy.plugins.filter_healthy import HealthyFilter
from router.policy.plugins.filter_kv_headroom import KvHeadroomFilter
from router.policy.plugins.filter_model import ModelFilter
from router.policy.plugins.filter_staleness import StalenessFilter
from router.policy.plugins.filter_tier import TierFilter
from router.policy.plugins.pick_max_score import MaxScorePicker
from router.policy.plugins.pick_power_of_two import PowerOfTwoPicker
from router.policy.plugins.pick_random import RandomPicker
from router.policy.plugins.pick_round_robin import RoundRobinPicker
from router.policy.plugins.pick_weighted_random import WeightedRandomPicker
from router.policy.plugins.score_cache_aware import CacheAwareScorer
from router.policy.plugins.score_dynamo_cost import DynamoCostScorer
from router.policy.plugins.score_least_kv import LeastKvScorer
from router.policy.plugins.score_least_request import LeastRequestScorer
from router.policy.plugins.score_llumnix import LlumnixScorer
from router.policy.plugins.score_lmetric import LmetricScorer
from router.policy.plugins.score_predicted_cost import PredictedCostScorer
from router.policy.plugins.score_prefix import PrefixScorer
from router.policy.plugins.score_queue_depth import QueueDepthScorer
from router.policy.plugins.score_sal import SalScorer

PluginT = TypeVar("PluginT")

FILTERS: Mapping[str, Callable[..., Filter]] = MappingProxyType(
    {cls.name: cls for cls in (HealthyFilter, ModelFilter, KvHeadroomFilter, StalenessFilter, TierFilter)}
)
SCORERS: Mapping[str, Callable[..., Scorer]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            QueueDepthScorer,
            LeastKvScorer,
            LeastRequestScorer,
            PrefixScorer,
            CacheAwareScorer,
            SalScorer,
            DynamoCostScorer,
            LlumnixScorer,
            LmetricScorer,
            PredictedCostScorer,
        )
    }
)
PICKERS: Mapping[str, Callable[..., Picker]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (MaxScorePicker, RandomPicker, RoundRobinPicker, PowerOfTwoPicker, WeightedRandomPicker)
    }
)


def make_filter(name: str, params: Mapping[str, object] | None = None) -> Filter:
    return _make(FILTERS, "filter", name, params)


def make_scorer(name: str, params: Mapping[str, object] | None = None) -> Scorer:
    return _make(SCORERS, "scorer", name, params)


def make_picker(name: str, params: Mapping[str, object] | None = None) -> Picker:
    return _make(PICKERS, "picker", name, params)


def _make(
    table: Mapping[str, Callable[..., PluginT]], kind: str, name: str, params: Mapping[str, object] | None
) -> PluginT:
    factory = table.get(name)
    if factory is None:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(sorted(table))}")
    return factory(**checked_params(f"{kind} {name!r}", params, parameter_defaults(factory)))
