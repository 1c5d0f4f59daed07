"""The greedy rule on hand-made tables."""

from __future__ import annotations

import pytest

import bitsmith_greedy_recipe.plugin as greedy_plugin
from bitsmith.plugins import Registry
from bitsmith.protocols import RecipeProblem
from bitsmith.testing import check_recipe_search
from bitsmith_greedy_recipe import GreedySearch, efficient_options


def problem(costs, dists, budget):
    return RecipeProblem(layers=[f"l{i}" for i in range(len(costs))], costs=costs, distortions=dists, budget=budget)


def test_registered_and_contract():
    registry = Registry(autoload=False, plugins=[greedy_plugin])
    search = registry.get("recipe_search", "greedy")
    check_recipe_search(search)
    assert Registry().get("recipe_search", "greedy").name == "greedy"


def test_efficient_options_drop_dominated_and_duplicates():
    # option 2 (cost 6, d 3) is dominated by option 1 (cost 4, d 2); option 3 duplicates option 0's cost
    assert efficient_options([2, 4, 6, 2, 8], [5.0, 2.0, 3.0, 7.0, 1.0]) == [0, 1, 4]


def test_starts_cheapest_and_buys_best_ratio_first():
    # layer 0: 2->4 bits saves 4 (ratio 2); layer 1: 2->4 saves 1 (ratio 0.5); budget allows one upgrade
    p = problem([[2, 4], [2, 4]], [[5.0, 1.0], [3.0, 2.0]], budget=6)
    assert GreedySearch()(p) == [1, 0]
    assert GreedySearch()(problem([[2, 4], [2, 4]], [[5.0, 1.0], [3.0, 2.0]], budget=4)) == [0, 0]
    assert GreedySearch()(problem([[2, 4], [2, 4]], [[5.0, 1.0], [3.0, 2.0]], budget=100)) == [1, 1]


def test_jumps_over_an_inefficient_middle_option():
    # layer 0: 2 -> 4 saves 0.1 (inefficient), 2 -> 6 saves 8 (ratio 2). Layer 1: 2 -> 4 saves 2 (ratio 1).
    p = problem([[2, 4, 6], [2, 4]], [[9.0, 8.9, 1.0], [3.0, 1.0]], budget=8)
    assert GreedySearch()(p) == [2, 0]


def test_falls_back_to_a_smaller_upgrade_that_fits():
    # the best upgrade (layer 0 to 10 bits) does not fit; the next best that fits is bought
    p = problem([[2, 10], [2, 3]], [[10.0, 0.0], [3.0, 2.9]], budget=6)
    assert GreedySearch()(p) == [0, 1]


def test_result_within_budget_and_error_when_nothing_fits():
    p = problem([[4, 8], [4, 8]], [[1.0, 0.5], [1.0, 0.5]], budget=7)
    with pytest.raises(ValueError, match="below the cheapest recipe"):
        GreedySearch()(p)


def test_bad_costs_are_named():
    p = problem([[2, -1]], [[1.0, 0.5]], budget=7)
    with pytest.raises(ValueError, match="layer 'l0': option 1 has cost -1"):
        GreedySearch()(p)


def test_greedy_is_suboptimal_on_the_classic_trap():
    # greedy buys layer 0's more efficient small upgrade (ratio 1 vs 0.95) and then
    # cannot afford layer 1's big one
    p = problem([[0, 1], [0, 10]], [[1.0, 0.0], [9.5, 0.0]], budget=10)
    choice = GreedySearch()(p)
    assert choice == [1, 0]
    assert p.distortion(choice) == 9.5  # the optimum [0, 1] has distortion 1.0
