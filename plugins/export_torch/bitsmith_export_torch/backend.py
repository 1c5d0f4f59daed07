"""The ``"torch"`` backend object registered with the ``export_backend`` hook."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitsmith import activation_hooks, compressed, export
from bitsmith.compressed import ActivationQuant, PalettizedTensor, QuantizedTensor
from bitsmith.errors import CompressionError

HOOKS = "_bitsmith_torch_hooks"
"""Key in ``module.__dict__`` of the fake-quantization hook handles this backend installed."""


class TorchBackend:
    """Export to a plain PyTorch model: dense dequantized weights, no bitsmith records.

    ``finalize(model)`` (in place; :func:`bitsmith.finalize` passes a copy) writes every
    compressed weight's ``dequantize()`` into its parameter (bit-identical to the prepared
    model), removes every record, and keeps activation quantization as a reference:
    forward (pre-)hooks that fake-quantize the recorded inputs/outputs with
    :meth:`~bitsmith.compressed.ActivationQuant.fake_quantize`. The result runs, trains
    and saves like any ``nn.Module``; its size is its dense size.
    """

    description = "plain PyTorch: dense dequantized weights, fake-quantize hooks for activations, records dropped"

    def finalize(self, model: nn.Module) -> nn.Module:
        """Convert ``model`` in place and return it."""
        from bitsmith.loading import disable_activation_quant

        disable_activation_quant(model)
        export.restore_dense(model)  # tensors another backend converted (seed 002: finalize(CoreAI), then quantize)
        items = list(compressed.iter_records(model))
        for module_name, module, name, record in items:  # check everything before changing anything
            if isinstance(record, (PalettizedTensor, QuantizedTensor)) and _stored(module, name) is None:
                qualified = f"{module_name}.{name}" if module_name else name
                raise CompressionError(f"{qualified}: has a {type(record).__name__} record but no parameter or "
                                       f"buffer {name!r} (was the model already finalized for another backend? "
                                       "finalize the prepared model instead)")
        done = set()
        for _, module, name, record in items:
            if isinstance(record, (PalettizedTensor, QuantizedTensor)):
                tensor = _stored(module, name)
                with torch.no_grad():
                    tensor.data = record.dequantize().to(device=tensor.device, dtype=tensor.dtype)
            elif isinstance(record, ActivationQuant) and id(module) not in done:
                done.add(id(module))
                activation_hooks.install(module, HOOKS)  # fake quantization, kept after the records go
        for _, module, name, _record in items:
            compressed.detach(module, name)
        return model


def _stored(module: nn.Module, name: str) -> Any:
    return module._parameters.get(name, module._buffers.get(name))
