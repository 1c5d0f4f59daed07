"""bitsmith-gptq: palettization whose LUT indices are chosen GPTQ-style, from calibration activations.

Registers the palettizer ``"gptq"`` (:class:`GPTQPalettizer`): LUTs from the
registered ``"kmeans"`` clusterer, then each layer's indices re-chosen column by
column so that the error of the layer's *output* on calibration inputs is small
(the rounding error of each column is compensated by the columns not yet chosen).
"""

from .assign import assign_indices, inverse_hessian_factor, refit_scales
from .config import GPTQOptions, GPTQPalettizerConfig
from .palettizer import GPTQPalettizer
from .stats import InputStats, LayerLayout, collect_input_stats, layer_layout

__all__ = ["GPTQOptions", "GPTQPalettizer", "GPTQPalettizerConfig", "InputStats", "LayerLayout", "assign_indices",
           "collect_input_stats", "inverse_hessian_factor", "layer_layout", "refit_scales"]
