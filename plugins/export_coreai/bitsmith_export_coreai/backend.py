"""The ``"coreai"`` backend object registered with the ``export_backend`` hook."""

from __future__ import annotations

from torch import nn

from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, PalettizedTensor, QuantizedTensor

from . import activations
from .modules import convert_weight


class CoreAIBackend:
    """Export for Core AI conversion: compressed weights become buffers a converter maps to LUT / dequantize ops.

    ``finalize(model)`` (in place; :func:`bitsmith.finalize` passes a copy):

    - every :class:`~bitsmith.compressed.PalettizedTensor` / :class:`~bitsmith.compressed.QuantizedTensor`
      record turns its tensor into buffers (``weight_lut``, ``weight_indices``, … or
      ``weight_int``, ``weight_scale``, …) from which ``module.weight`` is computed;
    - every :class:`~bitsmith.compressed.ActivationQuant` record (``input.<i>`` /
      ``output.<i>``) becomes a ``quantize_per_tensor`` -> ``dequantize`` pair around the module.

    Records stay attached (sizes and later passes still read them) and finalizing twice
    changes nothing, so a palettized model can be finalized, quantized for activations,
    and finalized again (seed 002). Outputs equal the prepared model's: bit-identical for
    weights; activations round like PyTorch's quantized kernels (see the README).
    """

    description = "Core AI conversion: LUT + indices / int8 + scale buffers, quantize/dequantize around activations"

    def finalize(self, model: nn.Module) -> nn.Module:
        """Convert ``model`` in place and return it."""
        from bitsmith.loading import disable_activation_quant

        disable_activation_quant(model)  # our Q/DQ hooks replace the core's eager fake quantization
        hooked = set()
        for module_name, module, name, record in compressed.iter_records(model):
            if isinstance(record, (PalettizedTensor, QuantizedTensor)):
                qualified = f"{module_name}.{name}" if module_name else name
                convert_weight(module, name, record, qualified)
            elif isinstance(record, ActivationQuant) and id(module) not in hooked:
                hooked.add(id(module))
                activations.install(module)
        return model
