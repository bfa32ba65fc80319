"""The columns a profile keeps from view to view are always those of the current view: rebuilt row
by row as loads change, they equal columns built afresh, speeds included."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from router.policy.columns import ColumnCache, FleetColumns
from tests.router.policy.decision_cases import case_views, changed, random_load


def assert_same_columns(kept: FleetColumns, fresh: FleetColumns) -> None:
    assert kept.ids == fresh.ids
    assert np.array_equal(kept.values, fresh.values)
    assert np.array_equal(kept.prefill_rates, fresh.prefill_rates)
    assert np.array_equal(kept.decode_steps, fresh.decode_steps)


def test_columns_follow_each_changed_load() -> None:
    rng, cache = random.Random(7), ColumnCache()
    loads = [random_load(i, rng) for i in range(12)]
    for step in range(40):
        for _ in range(rng.choice((0, 1, 1, 2, 5))):
            index = rng.randrange(len(loads))
            loads[index] = changed(loads[index], rng)
        if step % 13 == 12:
            loads.append(random_load(100 + step, rng))  # the fleet grows: built afresh
        columns = cache.columns(tuple(loads))
        fresh = FleetColumns.build(loads, cache.models)
        if step % 2:  # speeds asked for on some views only: computed whole when the last one lacks them
            assert_same_columns(columns, fresh)
    assert cache.columns(columns.replicas) is columns


def test_a_replaced_load_under_the_same_id_is_seen() -> None:
    cache = ColumnCache()
    cluster, _ = next(case_views(4))
    first = cache.columns(cluster.replicas)
    _ = first.prefill_rates
    replaced = dataclasses.replace(cluster.replicas[0], num_running=0, running_context_tokens=0)
    second = cache.columns((replaced, *cluster.replicas[1:]))
    assert second.replicas[0] is replaced
    assert_same_columns(second, FleetColumns.build(second.replicas, cache.models))
    assert first.previous is None  # no chain of old views is kept alive


def test_every_view_of_the_recorded_cases_matches_fresh_columns() -> None:
    for seed in range(6):
        cache = ColumnCache()
        for cluster, _ in case_views(seed):
            assert_same_columns(
                cache.columns(cluster.replicas), FleetColumns.build(cluster.replicas, cache.models)
            )
