"""The named policies: what each does on a small fleet, parameters, errors, and the CLI listing."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from fleetroute.policies_cmd import policies
from protos.routing import LengthEstimate
from router.policy.registry import build_policy, describe_policies, policy_names
from tests.router.helpers import DictPrefix, replica, request, view

DESIGN_POLICIES = [
    "round_robin",
    "random",
    "least_request",
    "power_of_two",
    "least_kv",
    "queue_depth",
    "prefix",
    "gie_default",
    "dynamo_cost",
    "llumnix",
    "lmetric",
    "sal",
    "predicted_cost",
]

FLEET = view(
    replica("h100", "h100-80gb", waiting_prefill_tokens=20_000, num_waiting=10, inflight_requests=12),
    replica("v100", "v100-32gb", free_blocks=600, inflight_requests=2),
    replica(
        "holder",
        "a100-80gb",
        free_blocks=300,
        num_running=20,
        running_context_tokens=20_000,
        inflight_requests=20,
    ),
    replica("sick", "h100-80gb", healthy=False),
    prefix=DictPrefix({"holder": range(1, 61)}),
)


def test_every_design_policy_is_registered() -> None:
    assert set(policy_names()) == set(DESIGN_POLICIES)


@pytest.mark.parametrize(
    ("name", "winner"),
    [
        ("least_request", "v100"),
        ("least_kv", "h100"),
        ("queue_depth", "v100"),  # tie between v100 and holder broken by the rng, see below
        ("prefix", "holder"),
        ("gie_default", "holder"),
        ("sal", "holder"),  # the whole prompt is cached there: nothing to prefill
        ("lmetric", "holder"),
        ("llumnix", "v100"),
        ("dynamo_cost", "v100"),  # 60 prefill + 400 active blocks against 0 + 700 on the holder
        ("predicted_cost", "h100"),  # 0.6 s of queue, then 100 steps at ~8 ms beat 20-deep A100 steps
    ],
)
def test_named_policy_picks(name: str, winner: str) -> None:
    decision = build_policy(name).decide(
        request(960, predicted=LengthEstimate(100, 80, 200)), FLEET, random.Random(3)
    )
    assert ("sick", "healthy") in decision.filtered_out
    if name == "queue_depth":
        assert decision.replica_id in {"v100", "holder"}
    else:
        assert decision.replica_id == winner


def test_round_robin_and_power_of_two() -> None:
    rr, rng = build_policy("round_robin"), random.Random(0)
    assert [rr.decide(request(), FLEET, rng).replica_id for _ in range(4)] == [
        "h100",
        "v100",
        "holder",
        "h100",
    ]
    p2 = build_policy("power_of_two")
    assert {p2.decide(request(), FLEET, rng).replica_id for _ in range(200)} == {"v100", "h100"}


def test_parameters_change_the_policy() -> None:
    req, rng = request(960), random.Random(0)
    assert build_policy("prefix").decide(req, FLEET, rng).replica_id == "holder"
    strict = build_policy("prefix", {"balance_abs_threshold": 5, "balance_rel_threshold": 1.2})
    assert strict.decide(req, FLEET, rng).replica_id == "v100"
    no_cache = build_policy("gie_default", {"prefix_weight": 0.0})
    assert no_cache.decide(req, FLEET, rng).replica_id != "holder"
    assert [f.name for f in build_policy("sal").filters] == ["healthy", "model", "kv_headroom"]
    assert [f.name for f in build_policy("sal", {"kv_headroom": False}).filters] == ["healthy", "model"]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fastest", None, "unknown policy 'fastest'; choose from round_robin, random"),
        ("prefix", {"threshold": 0.5}, "unknown parameter 'threshold'; parameters: balance_abs_threshold"),
        ("sal", {"kv_headroom": "yes"}, "parameter 'kv_headroom' must be a bool"),
        ("prefix", {"cache_threshold": True}, "must be a float"),
        ("random", {"seed": 1}, "unknown parameter 'seed'; parameters: none"),
        ("prefix", {"cache_threshold": 2.0}, "cache_threshold must be in"),
        ("predicted_cost", {"kv_threshold": -1}, "kv_threshold must be in"),
    ],
)
def test_registry_errors(name: str, params: dict[str, object] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_policy(name, params)


def test_each_build_is_a_fresh_profile() -> None:
    first, second = build_policy("round_robin"), build_policy("round_robin")
    rng = random.Random(0)
    first.decide(request(), FLEET, rng)
    assert second.decide(request(), FLEET, rng).replica_id == "h100"


def test_describe_policies_and_the_cli() -> None:
    described = {name: (description, params) for name, description, params in describe_policies()}
    assert described["prefix"][1] == {
        "cache_threshold": 0.3,
        "balance_abs_threshold": 64.0,
        "balance_rel_threshold": 1.5,
    }
    assert described["gie_default"][1] == {"queue_weight": 2.0, "kv_weight": 2.0, "prefix_weight": 3.0}
    listing = json.loads(CliRunner().invoke(policies, ["--json"]).output)
    assert [entry["name"] for entry in listing] == list(policy_names())
    assert all(entry["description"] for entry in listing)
    table = CliRunner().invoke(policies, [], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert all(name in table.output for name in DESIGN_POLICIES)
