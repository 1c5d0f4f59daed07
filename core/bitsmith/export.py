"""Export: hand a compressed model to a registered export backend."""

from __future__ import annotations

import copy
import enum
from typing import Any, Optional, Union

from attrs import define
from torch import nn

from . import compressed, plugins
from .errors import CompressionError


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


# ---------------------------------------------------------------------------- tensors a backend converted

CONVERTED = "_bitsmith_converted"
"""Key in ``module.__dict__`` of the ``{tensor name: Converted}`` dict of tensors a backend replaced by buffers."""


@define(frozen=True)
class Converted:
    """A compressed tensor that an export backend replaced by buffers (e.g. LUT + indices for Core AI).

    ``buffers``: the names of the module buffers the backend added for it;
    ``parameter``: whether the tensor was a parameter (else a buffer);
    ``layout``: the backend's own description of how to compute the tensor from them.
    A backend that also swaps the module's class sets ``_bitsmith_base`` (the original
    class) on the class it creates, so :func:`restore_dense` can undo the swap.
    """

    buffers: tuple[str, ...]
    parameter: bool
    layout: Any = None


def mark_converted(module: nn.Module, name: str, converted: Converted) -> None:
    """Record that tensor ``name`` of ``module`` now lives in ``converted.buffers``."""
    module.__dict__.setdefault(CONVERTED, {})[name] = converted


def converted_tensors(model: nn.Module) -> list[str]:
    """Qualified names of the tensors of ``model`` that a backend replaced by buffers."""
    return [f"{m}.{n}" if m else n for m, module in model.named_modules()
            for n in module.__dict__.get(CONVERTED, {})]


def restore_dense(model: nn.Module) -> int:
    """Undo every backend conversion in ``model`` in place: drop the added buffers, restore dense tensors.

    Each converted tensor comes back as a parameter (or buffer) holding its record's
    ``dequantize()``, bit-identical to the values the backend computed; a module whose
    class a backend swapped gets its original class back. Records stay attached, so
    another backend can then export the model (seed 002: palettize,
    ``finalize(CoreAI)``, quantize activations, export with any backend). Returns the
    number of tensors restored; raises :class:`~bitsmith.errors.CompressionError`
    naming the tensor when a converted tensor has no record to restore it from.
    """
    restored = 0
    for module_name, module in model.named_modules():
        conversions = module.__dict__.get(CONVERTED)
        if not conversions:
            continue
        records = compressed.records(module)
        for name, conv in list(conversions.items()):
            qualified = f"{module_name}.{name}" if module_name else name
            record = records.get(name)
            if not isinstance(record, (compressed.PalettizedTensor, compressed.QuantizedTensor)):
                raise CompressionError(f"{qualified}: was converted by an export backend but carries no weight "
                                       "record to restore it from")
            device = next((module._buffers[b].device for b in conv.buffers if module._buffers.get(b) is not None),
                          None)
            for buffer in conv.buffers:
                module._buffers.pop(buffer, None)
            dense = record.dequantize().to(device=device)
            del conversions[name]
            if conv.parameter:
                module._parameters[name] = nn.Parameter(dense, requires_grad=dense.is_floating_point())
            else:
                module._buffers[name] = dense
            restored += 1
        del module.__dict__[CONVERTED]
        base = getattr(type(module), "_bitsmith_base", None)
        if isinstance(base, type) and issubclass(type(module), base):
            module.__class__ = base
    return restored
