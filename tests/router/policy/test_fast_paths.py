"""The hot paths of the scorers, filters and profile against the per-replica definitions they inline,
on random fleets that include the edge cases (no capacity known, over-promised blocks, idle
replicas, unknown hardware, learned corrections, cached prefixes)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence

import pytest

from protos.routing import LengthEstimate, RoutingRequest
from router.policy.plugin import CandidateScore, candidate_scores
from router.policy.plugins.estimates import kv_fits, matched_blocks, matched_blocks_all
from router.policy.plugins.filter_healthy import HealthyFilter
from router.policy.plugins.filter_kv_headroom import KvHeadroomFilter
from router.policy.plugins.pick_max_score import MaxScorePicker
from router.policy.plugins.score_dynamo_cost import DynamoCostScorer, dynamo_cost
from router.policy.plugins.score_least_kv import LeastKvScorer
from router.policy.plugins.score_llumnix import LlumnixScorer, llumnix_freeness
from router.policy.plugins.score_lmetric import TIE_BREAK_BATCH, LmetricScorer, new_prefill_tokens
from router.policy.plugins.score_maps import higher_is_better, ratio_scores, ratio_scores_of
from router.policy.plugins.score_predicted_cost import (
    TIME_OFFSET_S,
    PredictedCostScorer,
    expected_cost_s,
    kv_usage_after,
    output_outcomes,
)
from router.policy.plugins.score_prefix import PrefixScorer
from router.policy.plugins.score_sal import SalScorer, estimated_ttft_s
from router.policy.plugins.speed_cache import SpeedCache
from router.policy.profile import Profile, WeightedScorer
from router.policy.view import ClusterView, ReplicaLoad, match_counts
from tests.router.helpers import DictPrefix, replica, request, view

GPUS = ("h100-80gb", "a100-80gb", "v100-32gb", None)


def random_fleet(rng: random.Random, size: int = 24) -> ClusterView:
    replicas = []
    cached: dict[str, range] = {}
    for index in range(size):
        total = rng.choice((0, 500, 2000))
        running = rng.choice((0, 0, rng.randint(1, 64)))
        load = replica(
            f"r{index}",
            rng.choice(GPUS),
            total_blocks=total,
            free_blocks=rng.randint(0, total),
            pending_blocks=rng.choice((0, rng.randint(0, 400))),
            num_running=running,
            running_context_tokens=running * rng.randint(100, 3000),
            num_waiting=rng.choice((0, rng.randint(1, 9))),
            waiting_prefill_tokens=rng.choice((0, rng.randint(1, 9000))),
            pending_requests=rng.randint(0, 2),
            pending_prefill_tokens=rng.choice((0, rng.randint(1, 3000))),
        )
        if rng.random() < 0.3:
            load = dataclasses.replace(
                load, speed=dataclasses.replace(load.speed, correction=rng.uniform(0.5, 2))
            )
        replicas.append(load)
        if rng.random() < 0.4:
            cached[load.replica_id] = range(1, rng.randint(2, 80))
    return view(*replicas, prefix=DictPrefix(cached))


def random_request(rng: random.Random) -> RoutingRequest:
    median = rng.uniform(20, 600)
    predicted = rng.choice((None, LengthEstimate(median * 1.3, median, median * 3)))
    return request(rng.randint(1, 2000), max_tokens=rng.choice((64, 1024)), predicted=predicted)


CASES = [(random_fleet(random.Random(seed)), random_request(random.Random(-seed))) for seed in range(40)]


def matched(req: RoutingRequest, cluster: ClusterView) -> dict[str, int]:
    return {r.replica_id: matched_blocks(req, r, cluster) for r in cluster.replicas}


def zero_unless_all(scores: dict[str, float], ids: Sequence[str], count: int) -> dict[str, float]:
    if len(ids) < count:
        for replica_id in ids:
            scores[replica_id] = 0.0
    return scores


@pytest.mark.parametrize(("cluster", "req"), CASES)
def test_sal_is_its_definition(cluster: ClusterView, req: RoutingRequest) -> None:
    m = matched(req, cluster)
    times = {r.replica_id: estimated_ttft_s(req, r, m[r.replica_id]) for r in cluster.replicas}
    too_full = [r.replica_id for r in cluster.replicas if not kv_fits(req, r, m[r.replica_id])]
    expected = zero_unless_all(ratio_scores(times, 1e-3), too_full, len(cluster.replicas))
    scorer = SalScorer()
    assert scorer.score(req, cluster.replicas, cluster) == expected
    assert scorer.score(req, cluster.replicas, cluster) == expected  # from the memo this time


@pytest.mark.parametrize(("cluster", "req"), CASES)
def test_predicted_cost_is_its_definition(cluster: ClusterView, req: RoutingRequest) -> None:
    m, outcomes = matched(req, cluster), output_outcomes(req)
    costs = {r.replica_id: expected_cost_s(req, r, m[r.replica_id], outcomes) for r in cluster.replicas}
    unsafe = [r.replica_id for r in cluster.replicas if kv_usage_after(req, r, m[r.replica_id]) > 0.8]
    expected = zero_unless_all(ratio_scores(costs, TIME_OFFSET_S), unsafe, len(cluster.replicas))
    scorer = PredictedCostScorer(0.8)
    for _ in range(2):
        assert scorer.score(req, cluster.replicas, cluster) == expected


@pytest.mark.parametrize(("cluster", "req"), CASES)
def test_token_scorers_are_their_definitions(cluster: ClusterView, req: RoutingRequest) -> None:
    m, loads = matched(req, cluster), cluster.replicas
    dynamo = {r.replica_id: dynamo_cost(req, r, m[r.replica_id], 2.0) for r in loads}
    assert DynamoCostScorer(2.0).score(req, loads, cluster) == ratio_scores(dynamo, 1.0)
    lmetric = {
        r.replica_id: new_prefill_tokens(req, r, m[r.replica_id]) * (r.batch_size + TIE_BREAK_BATCH)
        for r in loads
    }
    assert LmetricScorer().score(req, loads, cluster) == ratio_scores(lmetric, 1.0)
    assert LeastKvScorer().score(req, loads, cluster) == {
        r.replica_id: 1.0 - r.projected_kv_usage for r in loads
    }
    prefix = {
        r.replica_id: min(len(req.block_hashes), m[r.replica_id]) / len(req.block_hashes) for r in loads
    }
    assert PrefixScorer().score(req, loads, cluster) == prefix
    llumnix = higher_is_better({r.replica_id: llumnix_freeness(r) for r in loads})
    assert LlumnixScorer().score(req, loads, cluster) == llumnix


@pytest.mark.parametrize(("cluster", "req"), CASES)
def test_kv_headroom_is_kv_fits(cluster: ClusterView, req: RoutingRequest) -> None:
    fitting = [r for r in cluster.replicas if kv_fits(req, r, matched_blocks(req, r, cluster))]
    kept = KvHeadroomFilter().filter(req, cluster.replicas, cluster)
    assert list(kept) == (fitting or list(cluster.replicas))


class OneByOne:
    """A prefix lookup without ``match_blocks_many``."""

    def __init__(self, cached: Mapping[str, Sequence[int]]) -> None:
        self.inner = DictPrefix(cached)

    def match_blocks(self, replica_id: str, block_hashes: Sequence[int]) -> int:
        return self.inner.match_blocks(replica_id, block_hashes)


class Batched(OneByOne):
    def __init__(self, cached: Mapping[str, Sequence[int]]) -> None:
        super().__init__(cached)
        self.batches = 0

    def match_blocks_many(self, replica_ids: Sequence[str], block_hashes: Sequence[int]) -> list[int]:
        self.batches += 1
        return [7] * len(replica_ids)  # recognisably not the one-by-one answer


def test_match_counts_uses_the_batch_lookup_when_offered() -> None:
    cached = {"a": range(1, 5), "c": range(1, 3)}
    assert match_counts(OneByOne(cached), ["a", "b", "c"], (1, 2, 3)) == [3, 0, 2]
    batched = Batched(cached)
    assert match_counts(batched, ["a", "b"], (1, 2, 3)) == [7, 7] and batched.batches == 1
    assert match_counts(batched, ["a", "b"], ()) == [0, 0] and batched.batches == 1
    cluster = view(replica("a"), replica("b"), prefix=OneByOne(cached))
    assert matched_blocks_all(request(64), cluster.replicas, cluster) == [4, 0]


def test_view_get_finds_the_first_of_an_id_and_follows_replace() -> None:
    first, second = replica("a", free_blocks=1), replica("a", free_blocks=2)
    cluster = view(first, replica("b"), second)
    assert cluster.get("a") is first and cluster.get("zzz") is None
    assert cluster.get("a") is first  # from the index now
    other = dataclasses.replace(cluster, replicas=(second,))
    assert other.get("a") is second and other.get("b") is None
    assert other == dataclasses.replace(other)  # the index takes no part in equality


def test_candidate_scores_are_the_records_one_by_one() -> None:
    built = candidate_scores(["a", "b"], [0.5, 1.0], [(("x", 0.5),), (("x", 1.0),)])
    assert built == (CandidateScore("a", 0.5, (("x", 0.5),)), CandidateScore("b", 1.0, (("x", 1.0),)))
    assert built[1].replica_id == "b" and built[1].total == 1.0 and built[1].parts == (("x", 1.0),)
    assert candidate_scores([], [], []) == ()


class ReversingCopies:
    """A filter that drops unhealthy replicas and returns copies in reverse order."""

    name = "reversing"

    def filter(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Sequence[ReplicaLoad]:
        return [dataclasses.replace(r) for r in reversed(candidates) if r.healthy]


@pytest.mark.parametrize("step", [HealthyFilter(), ReversingCopies()])
def test_filtered_out_is_in_candidate_order_whatever_the_filter_returns(step: HealthyFilter) -> None:
    cluster = view(replica("a"), replica("b", healthy=False), replica("c"), replica("d", healthy=False))
    profile = Profile("p", (step,), (WeightedScorer(LeastKvScorer()),), MaxScorePicker())
    decision = profile.decide(request(), cluster, random.Random(0))
    assert decision.filtered_out == (("b", step.name), ("d", step.name))
    assert {s.replica_id for s in decision.scores} == {"a", "c"}


def test_speed_memo_follows_each_new_load_object() -> None:
    speeds = SpeedCache()
    idle = replica("a", "a100-80gb")
    busy = dataclasses.replace(idle, num_running=32, running_context_tokens=32 * 2000)
    for load, context in ((idle, 0.0), (busy, 2000.0), (idle, 0.0)):
        assert speeds.prefill_rates([load]) == [load.speed.prefill_tokens_per_s(load.num_running, context)]
    assert speeds.prefill_rates([idle])[0] > speeds.prefill_rates([busy])[0]
    step_with, marginal = speeds.replica_speeds([busy])[0][1:]
    assert step_with == speeds.decode_step_s(busy, busy.batch_size + 1)
    assert marginal == step_with - speeds.decode_step_s(busy, busy.batch_size)


class Fixed:
    def __init__(self, name: str, values: Mapping[str, float]) -> None:
        self.name, self.values = name, values

    def score(
        self, request: RoutingRequest, candidates: Sequence[ReplicaLoad], view: ClusterView
    ) -> Mapping[str, float]:
        return self.values


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_totals_are_the_weighted_sums_scorer_by_scorer(count: int) -> None:
    rng = random.Random(count)
    cluster = view(*(replica(f"r{i}") for i in range(9)))
    ids = [r.replica_id for r in cluster.replicas]
    columns = [[rng.choice((rng.random(), 1.5, -0.5, 0.0, 1.0)) for _ in ids] for _ in range(count)]
    weights = [rng.choice((0.5, 1.0, 3.0)) for _ in range(count)]
    scorers = [
        Fixed(f"s{k}", dict(reversed(list(zip(ids, column, strict=True)))))
        for k, column in enumerate(columns)
    ]
    profile = Profile("p", (), tuple(map(WeightedScorer, scorers, weights)), MaxScorePicker())
    decision = profile.decide(request(), cluster, random.Random(0))
    for index, score in enumerate(decision.scores):
        clamped = [min(1.0, max(0.0, column[index])) for column in columns]
        weighted = 0.0
        for weight, value in zip(weights, clamped, strict=True):
            weighted += weight * value
        expected_total = clamped[0] if count == 1 else weighted / sum(weights)
        assert score.total == expected_total
        assert score.parts == tuple((f"s{k}", value) for k, value in enumerate(clamped))


@pytest.mark.parametrize("seed", range(20))
def test_ratio_scores_of_columns_is_ratio_scores(seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"r{i}" for i in range(rng.randint(0, 12))]
    pool = (0.0, -1.0, math.inf, 5, rng.random(), rng.uniform(0, 1e4))
    costs = [rng.choice(pool) for _ in ids]
    for offset in (1.0, 1e-3):
        assert ratio_scores_of(ids, costs, offset) == ratio_scores(dict(zip(ids, costs, strict=True)), offset)
