"""A third-party recipe search: marginal gains (``search="marginal"``).

Start every layer at its cheapest option, then repeatedly take the upgrade (one
layer, one more expensive option) that removes the most distortion per extra bit
while the total stays within the budget.
"""

from __future__ import annotations

import bitsmith


def marginal_search(problem) -> list[int]:
    """One option index per layer of ``problem`` (a ``RecipeProblem``), within its budget."""
    if problem.min_cost() > problem.budget:
        raise ValueError(f"budget {problem.budget:g} bits is below the cheapest recipe ({problem.min_cost():g} bits)")
    choice = [min(range(len(costs)), key=costs.__getitem__) for costs in problem.costs]
    spent = problem.cost(choice)
    while True:
        best, best_gain = None, 0.0
        for i, (costs, dists) in enumerate(zip(problem.costs, problem.distortions)):
            for j, (cost, dist) in enumerate(zip(costs, dists)):
                extra, gain = cost - costs[choice[i]], dists[choice[i]] - dist
                if gain > 0 and spent + extra <= problem.budget:
                    rate = gain / max(extra, 1e-9)
                    if rate > best_gain:
                        best, best_gain = (i, j, extra), rate
        if best is None:
            return choice
        i, j, extra = best
        choice[i], spent = j, spent + extra


@bitsmith.hookimpl
def recipe_search(register):
    """Register ``"marginal"``."""
    register("marginal", marginal_search)
