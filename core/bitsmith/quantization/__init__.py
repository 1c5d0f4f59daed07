"""INT8 quantization of weights and activations: configs and specs here, the ``Quantizer`` in a plugin.

``Quantizer`` is provided by bitsmith-int8-quant and resolved through the
``quantizer`` registry (name ``"int8"``) on first access.
"""

from ..config import (
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    PerBlockGranularity,
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
    QuantizerConfig,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)


def __getattr__(name: str):
    if name == "Quantizer":
        from .. import plugins
        from ..errors import PluginError

        try:
            return plugins.get("quantizer", "int8")
        except PluginError as exc:
            raise ImportError(f"{name}: {exc}", name=name) from exc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Quantizer", "ModuleQuantizerConfig", "OpQuantizerConfig", "QuantizerConfig", "QuantizationScheme",
    "QuantizationSpec", "PerBlockGranularity", "PerChannelGranularity", "PerTensorGranularity",
    "default_activation_quantization_spec", "default_weight_quantization_spec",
]
