"""The config model: attrs specs and configs, and the converter that loads and dumps them."""

from .converter import ConfigError, converter, dump, from_dict, from_yaml, load, to_dict, to_yaml
from .module_types import register_module_type
from .palettization import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, OpKMeansPalettizerConfig
from .quantization import (
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QuantizerConfig,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)
from .specs import (
    PALETTIZATION_N_BITS,
    PalettizationSpec,
    PerBlockGranularity,
    PerChannelGranularity,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
    default_weight_palettization_spec,
)

__all__ = [
    "ConfigError", "converter", "dump", "from_dict", "from_yaml", "load", "to_dict", "to_yaml",
    "register_module_type",
    "KMeansPalettizerConfig", "ModuleKMeansPalettizerConfig", "OpKMeansPalettizerConfig",
    "ModuleQuantizerConfig", "OpQuantizerConfig", "QuantizerConfig",
    "default_activation_quantization_spec", "default_weight_quantization_spec",
    "PALETTIZATION_N_BITS", "PalettizationSpec", "PerBlockGranularity", "PerChannelGranularity",
    "PerGroupedChannelGranularity", "PerTensorGranularity", "QuantizationScheme", "QuantizationSpec",
    "default_weight_palettization_spec",
]
