"""Quantization configs: which weights and activations get which ``QuantizationSpec``.

Same three-level shape as palettization: ``QuantizerConfig`` (model),
``ModuleQuantizerConfig`` (a module's scope) and ``OpQuantizerConfig`` (an op type or
op name inside a scope), with activation fields ``op_input_spec``/``op_output_spec``
(keys: input/output index as a string, or ``"*"`` for all) and the scope-level
``module_input_spec``/``module_output_spec``. ``op_state_spec=None`` leaves every
weight alone (e.g. after palettization).
"""

from __future__ import annotations

from typing import ClassVar, Optional

from attrs import define, field

from .module_types import type_keys_converter as _type_keys
from .palettization import UNSET
from .specs import PerChannelGranularity, QuantizationScheme, QuantizationSpec
from .validators import mapping_of


def default_weight_quantization_spec() -> QuantizationSpec:
    """INT8 symmetric, one scale per output channel, min/max observer."""
    return QuantizationSpec(dtype="int8", qscheme=QuantizationScheme.SYMMETRIC,
                            granularity=PerChannelGranularity(axis=0), observer="min_max")


def default_activation_quantization_spec() -> QuantizationSpec:
    """INT8 asymmetric, per-tensor, moving-average observer."""
    return QuantizationSpec(dtype="int8", qscheme=QuantizationScheme.ASYMMETRIC, observer="moving_average")


def _default_state() -> dict:
    return {"weight": default_weight_quantization_spec()}


def _default_io() -> dict:
    return {"*": default_activation_quantization_spec()}


@define(kw_only=True)
class OpQuantizerConfig:
    """Quantization of one op type or op name: its weights, inputs and outputs."""

    op_state_spec: Optional[dict[str, Optional[QuantizationSpec]]] = field(
        factory=_default_state, validator=mapping_of("op_state_spec", QuantizationSpec, nullable=True))
    op_input_spec: Optional[dict[str, Optional[QuantizationSpec]]] = field(
        factory=_default_io, validator=mapping_of("op_input_spec", QuantizationSpec, nullable=True))
    op_output_spec: Optional[dict[str, Optional[QuantizationSpec]]] = field(
        factory=_default_io, validator=mapping_of("op_output_spec", QuantizationSpec, nullable=True))


class _ModulePresets:
    """Ready-made ``ModuleQuantizerConfig`` objects."""

    def w8a8(self) -> "ModuleQuantizerConfig":
        """INT8 per-channel weights, INT8 per-tensor activations (the default)."""
        return ModuleQuantizerConfig()

    def w8(self) -> "ModuleQuantizerConfig":
        """INT8 per-channel weights only; activations stay float."""
        return ModuleQuantizerConfig(op_input_spec=None, op_output_spec=None)

    def a8(self) -> "ModuleQuantizerConfig":
        """INT8 activations only; weights untouched (e.g. already palettized)."""
        return ModuleQuantizerConfig(op_state_spec=None)


@define(kw_only=True)
class ModuleQuantizerConfig:
    """Quantization of every op in a module's scope (or the whole model, as ``global_config``).

    Per tensor, highest priority first: ``module_state_spec`` / ``module_input_spec``
    / ``module_output_spec`` (the scope module itself), the matching
    ``op_name_config``, the matching ``op_type_config``, then ``op_state_spec`` /
    ``op_input_spec`` / ``op_output_spec``.
    """

    presets: ClassVar[_ModulePresets] = _ModulePresets()

    op_state_spec: Optional[dict[str, Optional[QuantizationSpec]]] = field(
        factory=_default_state, validator=mapping_of("op_state_spec", QuantizationSpec, nullable=True))
    op_input_spec: Optional[dict[str, Optional[QuantizationSpec]]] = field(
        factory=_default_io, validator=mapping_of("op_input_spec", QuantizationSpec, nullable=True))
    op_output_spec: Optional[dict[str, Optional[QuantizationSpec]]] = field(
        factory=_default_io, validator=mapping_of("op_output_spec", QuantizationSpec, nullable=True))
    op_type_config: dict[str, Optional[OpQuantizerConfig]] = field(
        factory=dict, converter=_type_keys("op_type_config"),  # type: ignore[misc]
        validator=mapping_of("op_type_config", OpQuantizerConfig))
    op_name_config: dict[str, Optional[OpQuantizerConfig]] = field(
        factory=dict, validator=mapping_of("op_name_config", OpQuantizerConfig))
    module_state_spec: dict[str, Optional[QuantizationSpec]] = field(
        factory=dict, validator=mapping_of("module_state_spec", QuantizationSpec))
    module_input_spec: dict[str, Optional[QuantizationSpec]] = field(
        factory=dict, validator=mapping_of("module_input_spec", QuantizationSpec))
    module_output_spec: dict[str, Optional[QuantizationSpec]] = field(
        factory=dict, validator=mapping_of("module_output_spec", QuantizationSpec))


class _ConfigPresets:
    """Ready-made ``QuantizerConfig`` objects whose global config is a module preset."""

    def __getattr__(self, name: str):
        make = getattr(ModuleQuantizerConfig.presets, name)

        def preset() -> "QuantizerConfig":
            return QuantizerConfig(global_config=make())

        preset.__doc__ = f"``QuantizerConfig`` with ``global_config=ModuleQuantizerConfig.presets.{name}()``."
        return preset


def _global(instance, attribute, value) -> None:
    if value is not UNSET and value is not None and not isinstance(value, ModuleQuantizerConfig):
        raise TypeError(f"global_config: expected a ModuleQuantizerConfig or None, got {value!r}")


@define(kw_only=True)
class QuantizerConfig:
    """Quantization config for a whole model.

    ``QuantizerConfig()`` quantizes weights to INT8 per-channel and activations to
    INT8 per-tensor with a moving-average observer. Precedence and the
    "omitted global_config" rule are the same as ``KMeansPalettizerConfig``.
    """

    presets: ClassVar[_ConfigPresets] = _ConfigPresets()
    yaml_key: ClassVar[str] = "quantization_config"
    """Top-level key of this class's YAML documents; a plugin's config class sets its own."""

    global_config: Optional[ModuleQuantizerConfig] = field(default=UNSET, validator=_global)  # type: ignore[assignment]
    module_type_configs: dict[str, Optional[ModuleQuantizerConfig]] = field(
        factory=dict, converter=_type_keys("module_type_configs"),  # type: ignore[misc]
        validator=mapping_of("module_type_configs", ModuleQuantizerConfig))
    module_name_configs: dict[str, Optional[ModuleQuantizerConfig]] = field(
        factory=dict, validator=mapping_of("module_name_configs", ModuleQuantizerConfig))

    def __attrs_post_init__(self) -> None:
        if self.global_config is UNSET:
            scoped = bool(self.module_type_configs or self.module_name_configs)
            self.global_config = None if scoped else ModuleQuantizerConfig()

    def set_global(self, config: Optional[ModuleQuantizerConfig]) -> "QuantizerConfig":
        """Replace ``global_config``; returns ``self``."""
        _global(self, None, config)
        self.global_config = config
        return self

    def set_module_type(self, module_type, config: Optional[ModuleQuantizerConfig]) -> "QuantizerConfig":
        """Set the config of a module class (class or dotted name); returns ``self``."""
        mapping_of("module_type_configs", ModuleQuantizerConfig)(self, None, {"": config})
        self.module_type_configs.update(_type_keys("module_type_configs")({module_type: config}))
        return self

    def set_module_name(self, module_name: str, config: Optional[ModuleQuantizerConfig]) -> "QuantizerConfig":
        """Set the config of a module by name or full-match regex; returns ``self``."""
        mapping_of("module_name_configs", ModuleQuantizerConfig)(self, None, {"": config})
        self.module_name_configs[module_name] = config
        return self
