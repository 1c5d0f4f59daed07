"""Exact recipe search: the multiple-choice knapsack solved by bounded Pareto dynamic programming.

Problem (:class:`bitsmith.protocols.RecipeProblem`): pick one option per layer,
minimise the summed distortion, keep the summed cost (bits) within the budget.

Algorithm, with exact (un-discretized) costs:

1. Per layer, keep only non-dominated options (dominated ones can always be swapped
   for their dominator without raising cost or distortion, so an optimum exists
   without them).
2. Incumbent: a feasible recipe from the best-ratio greedy upgrade rule (the same
   rule as ``bitsmith-greedy-recipe``), improved by a second pass that re-spends any
   leftover budget. Its distortion is an upper bound ``U`` on the optimum.
3. Lower bounds: for every suffix of layers ``i..L-1`` the LP relaxation of the
   knapsack (each layer may mix two neighbouring points of its lower convex hull) as
   a function of the remaining budget ``B`` is a convex piecewise-linear curve
   ``LB_i(B)``, precomputed once by sorting the suffix's hull segments by efficiency.
4. Dynamic programming layer by layer over *states* = partial recipes of layers
   ``0..i-1`` stored as ``(cost, distortion)``. Extending by every option of layer
   ``i``, a state is dropped when (a) even the cheapest completion exceeds the budget,
   (b) ``distortion + LB_{i+1}(budget - cost) > U`` (it cannot beat the incumbent), or
   (c) another state costs no more and distorts no more (Pareto dominance). None of
   these drops an optimal recipe, so the best final state is optimal; it is never
   worse than the incumbent, hence never worse than greedy.

Distortions are summed in layer order, exactly as :meth:`RecipeProblem.distortion`
does, so the reported optimum equals the problem's own evaluation bit for bit.
If the state count ever exceeds ``max_states`` (adversarial tables with thousands of
near-equal options), the most promising states (lowest ``distortion + LB``) are kept,
the result is still feasible and no worse than greedy, and :class:`OptimalityWarning`
says the optimum is no longer proven.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from bitsmith.protocols import RecipeProblem

__all__ = ["OptimalSearch", "OptimalityWarning", "solve"]


class OptimalityWarning(UserWarning):
    """The state limit was reached: the returned recipe is feasible and no worse than greedy, but not proven optimal."""


def _efficient(costs: Sequence[float], dists: Sequence[float]) -> list[int]:
    order = sorted(range(len(costs)), key=lambda j: (costs[j], dists[j], j))
    kept: list[int] = []
    for j in order:
        if not kept or (dists[j] < dists[kept[-1]] and costs[j] != costs[kept[-1]]):
            kept.append(j)
    return kept


def _hull(c: np.ndarray, d: np.ndarray) -> list[int]:
    """Lower convex hull (indices) of efficient options sorted by cost."""
    hull: list[int] = []
    for j in range(len(c)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> j
            if (d[b] - d[a]) * (c[j] - c[a]) >= (d[j] - d[a]) * (c[b] - c[a]):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def _check(problem: RecipeProblem) -> None:
    for name, costs, dists in zip(problem.layers, problem.costs, problem.distortions):
        for j, (c, d) in enumerate(zip(costs, dists)):
            if not np.isfinite(c) or c < 0:
                raise ValueError(f"layer {name!r}: option {j} has cost {c!r}; costs must be finite and >= 0")
            if not np.isfinite(d):
                raise ValueError(f"layer {name!r}: option {j} has distortion {d!r}; the optimal search needs "
                                 "finite distortions")
    if problem.min_cost() > problem.budget:
        raise ValueError(f"budget of {problem.budget:.0f} bits is below the cheapest recipe "
                         f"({problem.min_cost():.0f} bits: every layer at its smallest option)")


def _greedy(cost: list[np.ndarray], dist: list[np.ndarray], budget: float) -> list[int]:
    """Best-ratio upgrades that fit (positions into each layer's efficient options)."""
    n, width = len(cost), max(c.size for c in cost)
    c = np.full((n, width), np.inf)
    d = np.full((n, width), np.inf)
    for i in range(n):
        c[i, :cost[i].size], d[i, :dist[i].size] = cost[i], dist[i]
    rows, pos = np.arange(n), np.zeros(n, dtype=np.int64)
    spent = float(c[:, 0].sum())
    while True:
        extra = c - c[rows, pos][:, None]
        fits = (extra > 0) & np.isfinite(c) & (spent + extra <= budget)
        if not fits.any():
            return [int(p) for p in pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(fits, (d[rows, pos][:, None] - d) / extra, -np.inf)
        ties = np.argwhere(ratio == ratio.max())
        i, k = min(ties, key=lambda t: (extra[t[0], t[1]], t[0], t[1]))
        spent += float(extra[i, k])
        pos[i] = k


class _SuffixBound:
    """``LB_i(B)``: the LP-relaxation lower bound on the distortion of layers ``i..`` with budget ``B``."""

    def __init__(self, cost: list[np.ndarray], dist: list[np.ndarray]):
        n = len(cost)
        self.min_cost = np.zeros(n + 1)
        self.curves: list[tuple[np.ndarray, np.ndarray]] = [None] * (n + 1)  # type: ignore[list-item]
        segments: list[tuple[float, float, float]] = []  # (efficiency, extra cost, gain)
        base = 0.0
        self.curves[n] = (np.zeros(1), np.zeros(1))
        for i in range(n - 1, -1, -1):
            c, d = cost[i], dist[i]
            h = _hull(c, d)
            for a, b in zip(h, h[1:]):
                segments.append(((d[a] - d[b]) / (c[b] - c[a]), c[b] - c[a], d[a] - d[b]))
            base += d[0]
            self.min_cost[i] = self.min_cost[i + 1] + c[0]
            segs = sorted(segments, key=lambda s: -s[0])
            xs = np.concatenate([[0.0], np.cumsum([s[1] for s in segs])])
            ys = base - np.concatenate([[0.0], np.cumsum([s[2] for s in segs])])
            self.curves[i] = (xs, ys)

    def __call__(self, i: int, budget_left: np.ndarray) -> np.ndarray:
        xs, ys = self.curves[i]
        return np.interp(budget_left - self.min_cost[i], xs, ys)


def solve(problem: RecipeProblem, *, max_states: int = 2_000_000) -> tuple[list[int], bool]:
    """Optimal choice (original option indices) and whether optimality is proven (see module docstring)."""
    _check(problem)
    n = len(problem.layers)
    if n == 0:
        return [], True
    budget = float(problem.budget)
    kept = [_efficient(c, d) for c, d in zip(problem.costs, problem.distortions)]
    cost = [np.array([problem.costs[i][j] for j in k], dtype=np.float64) for i, k in enumerate(kept)]
    dist = [np.array([problem.distortions[i][j] for j in k], dtype=np.float64) for i, k in enumerate(kept)]
    incumbent_pos = _greedy(cost, dist, budget)
    incumbent = 0.0
    for i, p in enumerate(incumbent_pos):
        incumbent += dist[i][p]
    bound = _SuffixBound(cost, dist)
    slack = 1e-9 * abs(incumbent) + 1e-300

    state_cost = np.zeros(1)
    state_dist = np.zeros(1)
    parents: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    proven = True
    for i in range(n):
        k = len(cost[i])
        new_cost = (state_cost[:, None] + cost[i][None, :]).ravel()
        new_dist = (state_dist[:, None] + dist[i][None, :]).ravel()
        parent = np.repeat(np.arange(state_cost.size), k)
        pick = np.tile(np.arange(k), state_cost.size)
        left = budget - new_cost
        keep = left >= bound.min_cost[i + 1]
        lower = new_dist + bound(i + 1, left)
        keep &= lower <= incumbent + slack
        new_cost, new_dist, parent, pick, lower = new_cost[keep], new_dist[keep], parent[keep], pick[keep], lower[keep]
        order = np.lexsort((new_dist, new_cost))
        new_cost, new_dist, parent, pick, lower = (a[order] for a in (new_cost, new_dist, parent, pick, lower))
        running = np.minimum.accumulate(new_dist)
        pareto = np.ones(new_dist.size, dtype=bool)
        pareto[1:] = new_dist[1:] < running[:-1]
        new_cost, new_dist, parent, pick, lower = (a[pareto] for a in (new_cost, new_dist, parent, pick, lower))
        if new_cost.size > max_states:
            proven = False
            best = np.sort(np.argsort(lower, kind="stable")[:max_states])
            new_cost, new_dist, parent, pick = new_cost[best], new_dist[best], parent[best], pick[best]
        if new_cost.size == 0:  # only possible through float slack: fall back to the incumbent
            return [kept[i][p] for i, p in enumerate(incumbent_pos)], proven
        state_cost, state_dist = new_cost, new_dist
        parents.append(parent)
        picks.append(pick)
    s = int(np.argmin(state_dist))
    if state_dist[s] > incumbent:
        return [kept[i][p] for i, p in enumerate(incumbent_pos)], proven
    pos = [0] * n
    for i in range(n - 1, -1, -1):
        pos[i] = int(picks[i][s])
        s = int(parents[i][s])
    return [kept[i][p] for i, p in enumerate(pos)], proven


class OptimalSearch:
    """The ``"optimal"`` recipe search (:class:`bitsmith.protocols.RecipeSearch`): exact multiple-choice knapsack.

    :param max_states: cap on partial recipes kept per layer (see the module docstring).
    """

    name = "optimal"

    def __init__(self, max_states: int = 2_000_000):
        if isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
            raise ValueError(f"max_states: expected a positive integer, got {max_states!r}")
        self.max_states = max_states

    def __call__(self, problem: RecipeProblem) -> list[int]:
        """One option index per layer minimising total distortion within ``problem.budget``."""
        choice, proven = solve(problem, max_states=self.max_states)
        if not proven:
            warnings.warn(f"optimal recipe search kept only the {self.max_states} most promising partial recipes "
                          "per layer: the result fits the budget and is no worse than greedy, but is not proven "
                          "optimal", OptimalityWarning, stacklevel=2)
        return choice

    def search(self, problem: RecipeProblem) -> list[int]:
        """Same as calling the object."""
        return self(problem)

    def __repr__(self) -> str:
        return f"OptimalSearch(max_states={self.max_states})"
