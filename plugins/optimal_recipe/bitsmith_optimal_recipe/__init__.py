"""bitsmith-optimal-recipe: the exact "optimal" recipe search (see :mod:`bitsmith_optimal_recipe.optimal`)."""

from .optimal import OptimalityWarning, OptimalSearch, solve

__all__ = ["OptimalSearch", "OptimalityWarning", "solve"]
