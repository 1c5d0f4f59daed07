"""bitsmith-greedy-recipe: the "greedy" recipe search (see :mod:`bitsmith_greedy_recipe.greedy`)."""

from .greedy import GreedySearch, efficient_options

__all__ = ["GreedySearch", "efficient_options"]
