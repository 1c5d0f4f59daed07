"""Export: hand a compressed model to a registered export backend."""

from __future__ import annotations

import copy
import enum
from typing import Any, Optional, Union

from torch import nn

from . import plugins


class ExportBackend(str, enum.Enum):
    """Names of the first-party export backends; any registered name (a string) works too."""

    CoreAI = "coreai"
    Torch = "torch"
    Safetensors = "safetensors"
    ONNX = "onnx"
    CoreML = "coreml"

    def __str__(self) -> str:
        return self.value


def backend_name(backend: Union[str, ExportBackend]) -> str:
    """The registry name of a backend given as an enum member or a string."""
    return backend.value if isinstance(backend, ExportBackend) else str(backend)


def get_backend(backend: Union[str, ExportBackend], registry: Optional[plugins.Registry] = None) -> Any:
    """The registered backend implementation (``PluginError`` lists the available ones)."""
    return (registry or plugins.default_registry()).get("export_backend", backend_name(backend))


def finalize(model: nn.Module, backend: Union[str, ExportBackend] = ExportBackend.CoreAI, *,
             inplace: bool = False, registry: Optional[plugins.Registry] = None) -> nn.Module:
    """Export a model that carries compressed records with the named backend.

    The model is deep-copied first unless ``inplace``.
    """
    impl = get_backend(backend, registry)
    target = model if inplace else copy.deepcopy(model)
    return impl.finalize(target)
