"""Greedy recipe search: buy the most efficient upgrade that still fits, until none fits.

The exact rule, on a :class:`bitsmith.protocols.RecipeProblem` (one option per
layer, ``costs`` in bits, additive ``distortions``, a bit ``budget``):

1. Per layer, drop *dominated* options: an option is dominated when another option
   of the same layer costs no more and distorts no more (strictly better in one of
   the two; among exact duplicates the first is kept). The remaining options,
   sorted by cost, have strictly decreasing distortion.
2. Start every layer at its cheapest remaining option. If that total exceeds the
   budget, raise ``ValueError`` (no recipe fits).
3. Repeat: among all *upgrades* — moving one layer from its current option to any
   costlier option of that layer — that keep the total within the budget, buy the
   one with the largest distortion reduction per extra bit
   ``(d_current - d_new) / (c_new - c_current)``. Ties go to the cheaper upgrade,
   then to the earlier layer and option. Stop when no upgrade fits.

Non-convex option sets are handled by letting an upgrade jump over options: from
the current option every costlier option is a candidate, not only the next one. On
a layer whose options lie on their lower convex hull the best jump is always the
next hull point, so while the budget is loose the rule walks the hull in order of
efficiency (the classic greedy for the multiple-choice knapsack); an option above
the hull (an inefficient middle step) is skipped in favour of the jump to the next
hull point, and is only bought when it is the best upgrade that still fits near the
end of the budget. Greedy is fast (``O(steps * layers * options)``) but not always
optimal; ``bitsmith-optimal-recipe`` solves the same problem exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bitsmith.protocols import RecipeProblem

__all__ = ["GreedySearch", "efficient_options", "greedy_upgrades"]


def efficient_options(costs: Sequence[float], distortions: Sequence[float]) -> list[int]:
    """Indices of the non-dominated options of one layer, sorted by cost (distortion strictly decreasing)."""
    order = sorted(range(len(costs)), key=lambda j: (costs[j], distortions[j], j))
    kept: list[int] = []
    for j in order:
        if not kept or distortions[j] < distortions[kept[-1]]:
            if kept and costs[j] == costs[kept[-1]]:
                continue  # same cost, sorted by distortion: the first one is better
            kept.append(j)
    return kept


def _check(problem: RecipeProblem) -> None:
    for name, costs, dists in zip(problem.layers, problem.costs, problem.distortions):
        for j, (c, d) in enumerate(zip(costs, dists)):
            if not np.isfinite(c) or c < 0:
                raise ValueError(f"layer {name!r}: option {j} has cost {c!r}; costs must be finite and >= 0")
            if np.isnan(d):
                raise ValueError(f"layer {name!r}: option {j} has a NaN distortion")
    if problem.min_cost() > problem.budget:
        raise ValueError(f"budget of {problem.budget:.0f} bits is below the cheapest recipe "
                         f"({problem.min_cost():.0f} bits: every layer at its smallest option)")


def greedy_upgrades(problem: RecipeProblem) -> list[int]:
    """Run the rule in the module docstring; returns one option index per layer (original indexing)."""
    _check(problem)
    n = len(problem.layers)
    if n == 0:
        return []
    kept = [efficient_options(c, d) for c, d in zip(problem.costs, problem.distortions)]
    width = max(len(k) for k in kept)
    cost = np.full((n, width), np.inf)
    dist = np.full((n, width), np.inf)
    for i, options in enumerate(kept):
        cost[i, :len(options)] = [problem.costs[i][j] for j in options]
        dist[i, :len(options)] = [problem.distortions[i][j] for j in options]
    pos = np.zeros(n, dtype=np.int64)  # position in kept[i]; 0 = cheapest
    rows = np.arange(n)
    spent = float(cost[:, 0].sum())
    while True:
        extra = cost - cost[rows, pos][:, None]
        gain = dist[rows, pos][:, None] - dist
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = gain / extra
        fits = (extra > 0) & np.isfinite(cost) & (spent + extra <= problem.budget)
        if not fits.any():
            break
        ratio = np.where(fits, ratio, -np.inf)
        best = ratio.max()
        ties = np.argwhere(ratio == best)
        i, k = min(ties, key=lambda t: (extra[t[0], t[1]], t[0], t[1]))
        spent += float(extra[i, k])
        pos[i] = k
    return [kept[i][int(pos[i])] for i in range(n)]


class GreedySearch:
    """The ``"greedy"`` recipe search (:class:`bitsmith.protocols.RecipeSearch`): see the module docstring."""

    name = "greedy"

    def __call__(self, problem: RecipeProblem) -> list[int]:
        """One option index per layer, within ``problem.budget``; ``ValueError`` if nothing fits."""
        return greedy_upgrades(problem)

    def search(self, problem: RecipeProblem) -> list[int]:
        """Same as calling the object."""
        return self(problem)

    def __repr__(self) -> str:
        return "GreedySearch()"
