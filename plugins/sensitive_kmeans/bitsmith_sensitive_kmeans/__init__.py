"""bitsmith-sensitive-kmeans: Fisher-weighted k-means palettization (SqueezeLLM) for bitsmith.

Registers the clusterer ``"sensitive_kmeans"`` and the palettizer ``"sensitive_kmeans"``
(:class:`SKMPalettizer`, also importable as ``bitsmith.palettization.SKMPalettizer``).
"""

from .clusterer import SensitiveKMeansClusterer
from .config import SKMOptions, SKMPalettizerConfig
from .fisher import FisherAccumulator, Sensitivity, fisher_loss, load_sensitivity
from .palettizer import SKMPalettizer

__all__ = ["FisherAccumulator", "SKMOptions", "SKMPalettizer", "SKMPalettizerConfig", "Sensitivity",
           "SensitiveKMeansClusterer", "fisher_loss", "load_sensitivity"]
