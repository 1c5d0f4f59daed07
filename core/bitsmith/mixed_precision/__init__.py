"""Mixed-precision palettization in three stages (seed 000, paper 004).

1. :func:`compute_sensitivity` -> :class:`SensitivityTable`: every layer compressed
   alone with every candidate, scored against the uncompressed outputs by a
   registered metric; cached on disk, resumable, parallel on any executor (Dask:
   model and data sent once per worker), on the weights' device or ``device=``.
   Exact engines re-run only what follows the changed layer: ``fast`` (torch.fx)
   and ``block`` (eager replay of module calls, for models fx cannot trace, such as
   transformers); ``local`` scores each layer on its own output for large models.
2. :func:`generate_recipe` -> :class:`Recipe`: one candidate per layer for a target
   BPW or size, chosen by a registered search (``"greedy"``, ``"optimal"``);
   :func:`pareto_sweep` / :func:`plot_pareto` for a range of targets.
3. :func:`apply_recipe` (or ``bitsmith.palettization.palettize(model, recipe.to_config(),
   calibration_data)``, which runs the algorithm each layer's config names): the compressed model.

Example::

    from bitsmith.mixed_precision import compute_sensitivity, generate_recipe, apply_recipe

    table = compute_sensitivity(model, calibration_batch)          # 2/4/6-bit, PSNR
    print(table.head(5))
    recipe = generate_recipe(table, target_bpw=4, search="greedy")
    print(recipe)
    small = apply_recipe(model, recipe, table=table)
    recipe.save("recipe.yaml"); config = recipe.to_config()

Metrics, searches and palettizers are plugins (bitsmith-metrics,
bitsmith-greedy-recipe, bitsmith-optimal-recipe, bitsmith-kmeans); this package only
orchestrates them.
"""

from .cache import DEFAULT_CACHE_DIR, SensitivityCache
from .candidates import Candidate, candidate_grid, default_candidates, parse_candidate, resolve_candidates
from .engine import ENGINES, EngineFallbackWarning
from .inputs import LayerInfo, default_output_fn, find_layers
from .pareto import ParetoPoint, ParetoSweep, pareto_sweep, plot_pareto
from .recipe import RECIPE_SCHEMA_VERSION, Recipe, RecipeLayer, apply_recipe, generate_recipe
from .sensitivity import compute_sensitivity
from .table import SCHEMA_VERSION, SensitivityRow, SensitivityTable

__all__ = [
    "DEFAULT_CACHE_DIR", "ENGINES", "RECIPE_SCHEMA_VERSION", "SCHEMA_VERSION",
    "Candidate", "EngineFallbackWarning", "LayerInfo", "ParetoPoint", "ParetoSweep", "Recipe", "RecipeLayer",
    "SensitivityCache", "SensitivityRow", "SensitivityTable",
    "apply_recipe", "candidate_grid", "compute_sensitivity", "default_candidates", "default_output_fn",
    "find_layers", "generate_recipe", "pareto_sweep", "parse_candidate", "plot_pareto", "resolve_candidates",
]
