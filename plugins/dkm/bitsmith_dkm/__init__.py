"""bitsmith-dkm: differentiable k-means (DKM) palettization during fine-tuning.

Registers the palettizer ``"dkm"`` (:class:`DKMPalettizer`, also
``bitsmith.palettization.DKMPalettizer``) and the clusterer ``"dkm"`` (annealed soft
k-means, :class:`SoftKMeansClusterer`).
"""

from .clusterer import SoftKMeansClusterer
from .config import DKMOptions, DKMPalettizerConfig
from .palettizer import DKMPalettizer
from .parametrization import DKMParametrization
from .soft import ChunkedDKM, dkm_reconstruct

__all__ = ["ChunkedDKM", "DKMOptions", "DKMPalettizer", "DKMPalettizerConfig", "DKMParametrization",
           "SoftKMeansClusterer", "dkm_reconstruct"]
