"""bitsmith-refine: fit a palettized model's LUT entries and per-channel scales to the fp32 model's outputs.

:func:`refine` works on any palettized model (any palettizer, a mixed-precision
recipe); :class:`RefinePalettizer` (registered as ``"refine"``) is k-means
palettization followed by it. Indices, layout and size stay as they were.
"""

from .palettizer import RefinePalettizer
from .refine import LOSSES, RefineOptions, RefineResult, refine

__all__ = ["LOSSES", "RefineOptions", "RefinePalettizer", "RefineResult", "refine"]
