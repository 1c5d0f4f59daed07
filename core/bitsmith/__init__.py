"""bitsmith: compress PyTorch models for phones.

The core holds the config model, the plugin registry, the compressed-weight
representation, size accounting and the mixed-precision orchestration; algorithms,
metrics, searches and export backends are plugins found through the ``bitsmith``
entry-point group. Importing bitsmith loads no plugin.
"""

from .errors import BitsmithError, CompressionError, ConfigError, PluginError
from .export import ExportBackend, finalize
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["BitsmithError", "CompressionError", "ConfigError", "ExportBackend", "PluginError", "__version__",
           "compress", "finalize", "from_pretrained", "hookimpl", "load", "load_state_dict", "save_pretrained"]

_LAZY = {"load": "loading", "compress": "pipeline", "load_state_dict": "state", "save_pretrained": "pretrained",
         "from_pretrained": "pretrained"}


def __getattr__(name: str):
    """``bitsmith.load``, ``compress``, ``load_state_dict``, ``save_pretrained``, ``from_pretrained``, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
