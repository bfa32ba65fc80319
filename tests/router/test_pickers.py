"""Pickers: what each may choose, and how often."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.policy.plugin import CandidateScore, Picker
from router.policy.plugins.pick_max_score import MaxScorePicker
from router.policy.plugins.pick_power_of_two import PowerOfTwoPicker
from router.policy.plugins.pick_random import RandomPicker
from router.policy.plugins.pick_round_robin import RoundRobinPicker
from router.policy.plugins.pick_weighted_random import WeightedRandomPicker


def scored(*totals: float) -> tuple[CandidateScore, ...]:
    return tuple(CandidateScore(f"r{i}", total, ()) for i, total in enumerate(totals))


def picks(picker: Picker, scores: tuple[CandidateScore, ...], draws: int = 3000) -> Counter[str | None]:
    rng = random.Random(7)
    return Counter(picker.pick(scores, rng) for _ in range(draws))


@pytest.mark.parametrize(
    "picker",
    [MaxScorePicker(), RandomPicker(), RoundRobinPicker(), PowerOfTwoPicker(), WeightedRandomPicker()],
)
def test_no_candidates_no_pick_and_one_candidate_is_picked(picker: Picker) -> None:
    assert picker.pick((), random.Random(0)) is None
    assert picker.pick(scored(0.0), random.Random(0)) == "r0"


@pytest.mark.parametrize(
    ("picker", "totals", "expected"),
    [
        (MaxScorePicker(), (0.2, 0.9, 0.5), {"r1"}),
        (MaxScorePicker(), (0.9, 0.2, 0.9), {"r0", "r2"}),
        (RandomPicker(), (0.0, 1.0, 0.5), {"r0", "r1", "r2"}),
        (PowerOfTwoPicker(), (0.1, 0.5, 0.9), {"r1", "r2"}),  # the worst never wins a pair
        (PowerOfTwoPicker(), (0.3, 0.6), {"r1"}),
        (WeightedRandomPicker(), (0.0, 1.0, 0.5), {"r1", "r2"}),
        (WeightedRandomPicker(), (0.0, 0.0), {"r0", "r1"}),
    ],
)
def test_picks_only_from(picker: Picker, totals: tuple[float, ...], expected: set[str]) -> None:
    assert set(picks(picker, scored(*totals))) == expected


def test_max_score_treats_rounding_noise_as_a_tie() -> None:
    assert set(picks(MaxScorePicker(), scored(0.1 + 0.2, 0.3))) == {"r0", "r1"}


def test_random_is_uniform_and_weighted_random_proportional() -> None:
    uniform = picks(RandomPicker(), scored(0.0, 1.0, 0.5), draws=6000)
    assert all(1800 < n < 2200 for n in uniform.values())
    weighted = picks(WeightedRandomPicker(), scored(0.25, 0.75), draws=8000)
    assert 0.72 < weighted["r1"] / 8000 < 0.78


def test_round_robin_cycles_and_each_instance_keeps_its_own_turn() -> None:
    rng, first, second = random.Random(0), RoundRobinPicker(), RoundRobinPicker()
    assert [first.pick(scored(0, 0, 0), rng) for _ in range(4)] == ["r0", "r1", "r2", "r0"]
    assert second.pick(scored(0, 0, 0), rng) == "r0"


def test_power_of_two_prefers_the_better_of_each_pair() -> None:
    counts = picks(PowerOfTwoPicker(), scored(0.1, 0.5, 0.9), draws=6000)
    assert counts["r2"] > 1.8 * counts["r1"]  # r2 wins every pair it is in (2/3), r1 only (r0, r1)
