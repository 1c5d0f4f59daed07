"""Weight palettization: configs, specs, the shared ``Palettizer`` machinery and the plugin classes.

``KMeansPalettizer``, ``SKMPalettizer`` and ``DKMPalettizer`` are provided by plugins
(bitsmith-kmeans, bitsmith-sensitive-kmeans, bitsmith-dkm) and resolved through the
``palettizer`` registry on first access, with an install hint when absent.
:func:`palettize` applies a config whose scopes name different algorithms.
"""

from ..config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    default_weight_palettization_spec,
)
from .apply import palettize, split_by_algorithm
from .base import Palettizer
from .report import LayerReport, PalettizationReport
from .tensor import palettize_tensor

_PLUGIN_CLASSES = {"KMeansPalettizer": "kmeans", "SKMPalettizer": "sensitive_kmeans", "DKMPalettizer": "dkm"}


def __getattr__(name: str):
    if name in _PLUGIN_CLASSES:
        from .. import plugins
        from ..errors import PluginError

        try:
            return plugins.get("palettizer", _PLUGIN_CLASSES[name])
        except PluginError as exc:
            raise ImportError(f"{name}: {exc}", name=name) from exc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KMeansPalettizer", "SKMPalettizer", "DKMPalettizer", "Palettizer",
    "KMeansPalettizerConfig", "ModuleKMeansPalettizerConfig", "OpKMeansPalettizerConfig",
    "PalettizationSpec", "PerGroupedChannelGranularity", "PerTensorGranularity",
    "default_weight_palettization_spec", "LayerReport", "PalettizationReport", "palettize", "palettize_tensor",
    "split_by_algorithm",
]
