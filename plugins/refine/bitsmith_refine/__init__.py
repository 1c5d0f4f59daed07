"""bitsmith-refine: fit a palettized model's LUT entries and per-channel scales to the fp32 model's outputs.

:func:`refine` works on any palettized model (any palettizer, a mixed-precision
recipe); :class:`RefinePalettizer` (registered as ``"refine"``) is k-means
palettization followed by it. Indices, layout and size stay as they were.
:func:`~bitsmith_refine.augment.augmented_views` turns a few calibration photos into
an endless stream of fresh, strongly augmented batches for it.
"""

from .augment import AugmentOptions, augmented_views
from .config import RefinePalettizerConfig
from .palettizer import RefinePalettizer
from .refine import LOSSES, RefineOptions, RefineResult, refine

__all__ = ["LOSSES", "AugmentOptions", "RefineOptions", "RefinePalettizer", "RefinePalettizerConfig", "RefineResult", "augmented_views", "refine"]
