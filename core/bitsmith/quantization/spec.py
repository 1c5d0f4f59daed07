"""Quantization specs (seed 002 import path ``bitsmith.quantization.spec``)."""

from ..config.specs import (
    PerBlockGranularity,
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
)

__all__ = ["PerBlockGranularity", "PerChannelGranularity", "PerTensorGranularity", "QuantizationScheme",
           "QuantizationSpec"]
