"""Entry point of bitsmith-optimal-recipe: registers the ``"optimal"`` recipe search."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def recipe_search(register):
    """Register :class:`~bitsmith_optimal_recipe.optimal.OptimalSearch` as ``"optimal"``."""
    from .optimal import OptimalSearch

    register("optimal", OptimalSearch())
