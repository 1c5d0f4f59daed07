"""Entry point of bitsmith-greedy-recipe: registers the ``"greedy"`` recipe search."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def recipe_search(register):
    """Register :class:`~bitsmith_greedy_recipe.greedy.GreedySearch` as ``"greedy"``."""
    from .greedy import GreedySearch

    register("greedy", GreedySearch())
