"""Palettization specs (seed 003 import path ``bitsmith.palettization.spec``)."""

from ..config.specs import (
    PalettizationSpec,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    default_weight_palettization_spec,
)

__all__ = ["PalettizationSpec", "PerGroupedChannelGranularity", "PerTensorGranularity",
           "default_weight_palettization_spec"]
