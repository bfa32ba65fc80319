"""The named policies of DESIGN.md section 6, built as profiles from the plugin catalogue.

Every named policy filters out unhealthy, draining or circuit-open replicas and those serving
another model, then scores and picks as its description says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from router.policy.params import ParamValue, checked_params
from router.policy.plugin import Filter, Picker, Scorer
from router.policy.plugins.filter_healthy import HealthyFilter
from router.policy.plugins.filter_kv_headroom import KvHeadroomFilter
from router.policy.plugins.filter_model import ModelFilter
from router.policy.plugins.pick_max_score import MaxScorePicker
from router.policy.plugins.pick_power_of_two import PowerOfTwoPicker
from router.policy.plugins.pick_random import RandomPicker
from router.policy.plugins.pick_round_robin import RoundRobinPicker
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
from router.policy.profile import Profile, WeightedScorer

Params = Mapping[str, ParamValue]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    description: str
    defaults: Params
    build: Callable[[Params], Profile]


def build_policy(name: str, params: Mapping[str, object] | None = None) -> Profile:
    """A fresh profile for the named policy (each has its own picker state); ValueError on an
    unknown name or parameter."""
    spec = _POLICIES.get(name)
    if spec is None:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(policy_names())}")
    return spec.build(checked_params(f"policy {name!r}", params, spec.defaults))


def policy_names() -> tuple[str, ...]:
    return tuple(_POLICIES)


def describe_policies() -> list[tuple[str, str, dict[str, ParamValue]]]:
    """(name, one-line rule, parameters with their defaults) for every named policy."""
    return [(s.name, s.description, dict(s.defaults)) for s in _POLICIES.values()]


def _profile(
    name: str,
    scorers: tuple[tuple[Scorer, float], ...],
    picker: Picker | None = None,
    extra_filters: tuple[Filter, ...] = (),
) -> Profile:
    filters: tuple[Filter, ...] = (HealthyFilter(), ModelFilter(), *extra_filters)
    weighted = tuple(WeightedScorer(scorer, weight) for scorer, weight in scorers)
    return Profile(name, filters, weighted, picker if picker is not None else MaxScorePicker())


def _kv_filter(params: Params) -> tuple[Filter, ...]:
    return (KvHeadroomFilter(),) if params["kv_headroom"] else ()


def _float(params: Params, key: str) -> float:
    return float(params[key])


def _round_robin(p: Params) -> Profile:
    return _profile("round_robin", (), RoundRobinPicker())


def _random(p: Params) -> Profile:
    return _profile("random", (), RandomPicker())


def _least_request(p: Params) -> Profile:
    return _profile("least_request", ((LeastRequestScorer(), 1.0),))


def _power_of_two(p: Params) -> Profile:
    return _profile("power_of_two", ((LeastRequestScorer(), 1.0),), PowerOfTwoPicker())


def _least_kv(p: Params) -> Profile:
    return _profile("least_kv", ((LeastKvScorer(), 1.0),))


def _queue_depth(p: Params) -> Profile:
    return _profile("queue_depth", ((QueueDepthScorer(), 1.0),))


def _prefix(p: Params) -> Profile:
    thresholds = {key: float(value) for key, value in p.items()}
    return _profile("prefix", ((CacheAwareScorer(**thresholds), 1.0),))


def _gie_default(p: Params) -> Profile:
    queue, kv, prefix = (_float(p, key) for key in ("queue_weight", "kv_weight", "prefix_weight"))
    return _profile(
        "gie_default", ((QueueDepthScorer(), queue), (LeastKvScorer(), kv), (PrefixScorer(), prefix))
    )


def _dynamo_cost(p: Params) -> Profile:
    return _profile("dynamo_cost", ((DynamoCostScorer(_float(p, "prefill_weight")), 1.0),))


def _llumnix(p: Params) -> Profile:
    return _profile("llumnix", ((LlumnixScorer(), 1.0),))


def _lmetric(p: Params) -> Profile:
    return _profile("lmetric", ((LmetricScorer(), 1.0),))


def _sal(p: Params) -> Profile:
    return _profile("sal", ((SalScorer(), 1.0),), extra_filters=_kv_filter(p))


def _predicted_cost(p: Params) -> Profile:
    scorer = PredictedCostScorer(_float(p, "kv_threshold"))
    return _profile("predicted_cost", ((scorer, 1.0),), extra_filters=_kv_filter(p))


def _spec(
    name: str, description: str, build: Callable[[Params], Profile], **defaults: ParamValue
) -> PolicySpec:
    return PolicySpec(name, description, MappingProxyType(defaults), build)


_POLICIES: Mapping[str, PolicySpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _spec("round_robin", "baseline: the candidates in turn", _round_robin),
            _spec("random", "baseline: uniformly at random", _random),
            _spec("least_request", "fewest requests in flight from the router", _least_request),
            _spec(
                "power_of_two", "two candidates at random, the one with fewer in flight wins", _power_of_two
            ),
            _spec("least_kv", "highest 1 - projected KV usage", _least_kv),
            _spec(
                "queue_depth", "shortest queue (waiting + unacknowledged), min-max normalised", _queue_depth
            ),
            _spec(
                "prefix",
                "SGLang cache-aware: longest prefix match while the load is balanced, else least loaded",
                _prefix,
                cache_threshold=0.3,
                balance_abs_threshold=64.0,
                balance_rel_threshold=1.5,
            ),
            _spec(
                "gie_default",
                "Gateway API Inference Extension default: queue 2, KV 2, prefix 3",
                _gie_default,
                queue_weight=2.0,
                kv_weight=2.0,
                prefix_weight=3.0,
            ),
            _spec(
                "dynamo_cost",
                "Dynamo: min prefill_weight x (queued + uncached) prefill blocks + active blocks",
                _dynamo_cost,
                prefill_weight=1.0,
            ),
            _spec("llumnix", "Llumnix: max (free blocks - waiting blocks) / (running + waiting)", _llumnix),
            _spec("lmetric", "LMetric: min new prefill tokens x batch size", _lmetric),
            _spec(
                "sal",
                "speed-aware: min (queued + uncached prefill tokens) / the replica's own prefill rate; "
                "replicas without KV room for prompt + p90 output filtered out",
                _sal,
                kv_headroom=True,
            ),
            _spec(
                "predicted_cost",
                "min expected increase of total completion time over the predicted output lengths, "
                "with a KV safety threshold",
                _predicted_cost,
                kv_threshold=0.9,
                kv_headroom=True,
            ),
        )
    }
)
