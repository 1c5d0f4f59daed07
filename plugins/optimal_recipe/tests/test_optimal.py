"""The exact search against brute force, on crafted tables and under the state cap."""

from __future__ import annotations

import itertools
import random

import pytest

import bitsmith_optimal_recipe.plugin as optimal_plugin
from bitsmith.plugins import Registry
from bitsmith.protocols import RecipeProblem
from bitsmith.testing import check_recipe_search
from bitsmith_optimal_recipe import OptimalityWarning, OptimalSearch, solve


def problem(costs, dists, budget):
    return RecipeProblem(layers=[f"l{i}" for i in range(len(costs))], costs=costs, distortions=dists, budget=budget)


def brute_force(p):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in p.costs]):
        if p.cost(choice) <= p.budget and (best is None or p.distortion(choice) < best):
            best = p.distortion(choice)
    return best


def random_problem(rng, n_layers, n_options, integral=True):
    costs, dists = [], []
    for _ in range(n_layers):
        size = rng.randint(1, 50)
        bits = sorted(rng.sample([1, 2, 3, 4, 6, 8], n_options))
        costs.append([b * size + (16 * 2**b if integral else rng.random()) for b in bits])
        base = rng.uniform(0.1, 10)
        # noisy, sometimes non-convex or non-monotone distortions
        dists.append([base * 2 ** (-b) * rng.uniform(0.5, 1.5) for b in bits])
    lo = sum(min(c) for c in costs)
    hi = sum(max(c) for c in costs)
    return problem(costs, dists, lo + rng.random() * (hi - lo))


def test_registered_and_contract():
    registry = Registry(autoload=False, plugins=[optimal_plugin])
    check_recipe_search(registry.get("recipe_search", "optimal"))
    assert Registry().get("recipe_search", "optimal").name == "optimal"


def test_strictly_better_than_the_greedy_rule_on_a_crafted_table():
    # The best-ratio greedy buys layer 0's upgrade (ratio 1.0 > 0.95) and then cannot
    # afford layer 1's; its recipe [1, 0] has distortion 9.5. The optimum is [0, 1]: 1.0.
    p = problem([[0, 1], [0, 10]], [[1.0, 0.0], [9.5, 0.0]], budget=10)
    choice = OptimalSearch()(p)
    assert choice == [0, 1]
    assert p.distortion(choice) == 1.0


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_on_random_tables(seed):
    rng = random.Random(seed)
    p = random_problem(rng, n_layers=rng.randint(1, 6), n_options=rng.randint(1, 4), integral=seed % 2 == 0)
    choice = OptimalSearch()(p)
    assert p.cost(choice) <= p.budget
    assert p.distortion(choice) == pytest.approx(brute_force(p), rel=1e-12, abs=0)


def test_large_table_is_fast_and_feasible():
    rng = random.Random(1)
    p = random_problem(rng, n_layers=150, n_options=6)
    choice, proven = solve(p)
    assert proven and p.cost(choice) <= p.budget


def test_state_cap_warns_and_stays_feasible():
    rng = random.Random(3)
    p = random_problem(rng, n_layers=12, n_options=4, integral=False)
    exact = OptimalSearch()(p)
    with pytest.warns(OptimalityWarning, match="not proven optimal"):
        capped = OptimalSearch(max_states=2)(p)
    assert p.cost(capped) <= p.budget
    assert p.distortion(capped) >= p.distortion(exact)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="below the cheapest recipe"):
        OptimalSearch()(problem([[4, 8]], [[1.0, 0.5]], budget=3))
    with pytest.raises(ValueError, match="layer 'l0': option 1 has distortion nan"):
        OptimalSearch()(problem([[4, 8]], [[1.0, float("nan")]], budget=30))
    with pytest.raises(ValueError, match="max_states"):
        OptimalSearch(max_states=0)
