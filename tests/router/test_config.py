"""Profiles written in YAML: a user-written profile routes, and mistakes read clearly."""

from __future__ import annotations

import random

import pytest

from router.policy.config import profile_from_mapping, profile_from_yaml
from tests.router.helpers import DictPrefix, replica, request, view

USER_PROFILE = """
name: fast-and-cached
filters:
  - healthy
  - model
  - {name: staleness, params: {max_staleness_s: 1.0}}
  - name: kv_headroom
scorers:
  - {name: sal, weight: 3}
  - name: prefix
picker: {name: max_score}
"""


def test_a_user_written_profile_routes() -> None:
    built = profile_from_yaml(USER_PROFILE)
    assert built.name == "fast-and-cached"
    assert [f.name for f in built.filters] == ["healthy", "model", "staleness", "kv_headroom"]
    assert [(s.scorer.name, s.weight) for s in built.scorers] == [("sal", 3.0), ("prefix", 1.0)]
    cluster = view(
        replica("stale-h100", "h100-80gb", staleness_s=1.5),
        replica("a100"),
        replica("warm-a100"),
        prefix=DictPrefix({"warm-a100": range(1, 61)}),
    )
    decision = built.decide(request(960), cluster, random.Random(0))
    assert decision.replica_id == "warm-a100"
    assert decision.filtered_out == (("stale-h100", "staleness"),)
    assert {name for s in decision.scores for name, _ in s.parts} == {"sal", "prefix"}


def test_defaults_fill_in_filters_and_picker() -> None:
    built = profile_from_yaml("name: minimal\nscorers: [least_kv]\n")
    assert [f.name for f in built.filters] == ["healthy", "model"]
    assert built.picker.name == "max_score"
    assert profile_from_mapping({"name": "rr", "picker": "round_robin"}).picker.name == "round_robin"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nscorers: [fastest]\n", "profile 'x': unknown scorer 'fastest'; choose from cache_aware"),
        ("name: x\nfilters: [gpu]\n", "unknown filter 'gpu'; choose from healthy"),
        ("name: x\npicker: best\n", "unknown picker 'best'; choose from max_score"),
        (
            "name: x\nscorers: [{name: sal, weight: -1}]\n",
            "scorers.0.weight: Input should be greater than or equal",
        ),
        ("name: x\nscorers: [{name: sal, weight: .nan}]\n", "scorers.0.weight"),
        ("name: x\nscorer: [sal]\n", "scorer: Extra inputs are not permitted"),
        ("scorers: [sal]\n", "name: Field required"),
        ("name: x\nscorers: [{name: dynamo_cost, params: {weight: 2}}]\n", "unknown parameter 'weight'"),
        ("name: x\nfilters: [{name: staleness, params: {max_staleness_s: soon}}]\n", "must be a float"),
        ("name: x\nscorers: [least_kv, least_kv]\n", "appears more than once"),
        ("- sal\n", "a profile is a YAML mapping"),
        ("name: [unclosed\n", "profile YAML does not parse"),
    ],
)
def test_profile_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        profile_from_yaml(text)
    assert "\n" not in str(raised.value)
