"""Palettization configs: which weights get which ``PalettizationSpec``.

Three classes mirror seed 003: ``KMeansPalettizerConfig`` (whole model),
``ModuleKMeansPalettizerConfig`` (a module's scope) and ``OpKMeansPalettizerConfig``
(one op type or op name inside a scope). Precedence is resolved in
:mod:`bitsmith.resolve`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import attrs
from attrs import define, field

from . import algorithms as _algorithms
from .module_types import type_keys_converter as _type_keys
from .specs import PalettizationSpec, PerGroupedChannelGranularity, PerTensorGranularity, default_weight_palettization_spec
from .validators import mapping_of


def default_op_state_spec() -> dict[str, Optional[PalettizationSpec]]:
    """``{"weight": 4-bit, "in_proj_weight": 4-bit}``: what an argument-less config palettizes."""
    return {"weight": default_weight_palettization_spec(), "in_proj_weight": default_weight_palettization_spec()}


@define(kw_only=True)
class OpKMeansPalettizerConfig:
    """Palettization of one op type or op name inside a module scope (only ``op_state_spec`` is used)."""

    op_state_spec: dict[str, Optional[PalettizationSpec]] = field(
        factory=default_op_state_spec, validator=mapping_of("op_state_spec", PalettizationSpec)
    )


ON_INCOMPATIBLE = ("error", "skip", "fallback")
"""Allowed values of ``on_incompatible``."""


def _on_incompatible(instance, attribute, value) -> None:
    if value is not None and value not in ON_INCOMPATIBLE:
        raise ValueError(f"on_incompatible: {value!r} is not one of {', '.join(ON_INCOMPATIBLE)}")


class _ModulePresets:
    """Ready-made ``ModuleKMeansPalettizerConfig`` objects: ``w2() … w8()`` (``on_incompatible="fallback"``)."""

    @staticmethod
    def _make(n_bits: int, grouped: bool) -> "ModuleKMeansPalettizerConfig":
        gran = PerGroupedChannelGranularity(axis=0, group_size=16) if grouped else PerTensorGranularity()
        return ModuleKMeansPalettizerConfig(op_state_spec={
            "weight": PalettizationSpec(n_bits=n_bits, granularity=gran),
            "in_proj_weight": PalettizationSpec(n_bits=n_bits, granularity=gran),
        }, on_incompatible="fallback")

    def w2(self) -> "ModuleKMeansPalettizerConfig":
        """2-bit, one LUT per group of 16 output channels."""
        return self._make(2, grouped=True)

    def w3(self) -> "ModuleKMeansPalettizerConfig":
        """3-bit, one LUT per group of 16 output channels."""
        return self._make(3, grouped=True)

    def w4(self) -> "ModuleKMeansPalettizerConfig":
        """4-bit, one LUT per group of 16 output channels."""
        return self._make(4, grouped=True)

    def w6(self) -> "ModuleKMeansPalettizerConfig":
        """6-bit per-tensor."""
        return self._make(6, grouped=False)

    def w8(self) -> "ModuleKMeansPalettizerConfig":
        """8-bit per-tensor."""
        return self._make(8, grouped=False)


@define(kw_only=True)
class ModuleKMeansPalettizerConfig:
    """Palettization of every op in a module's scope (or of the whole model, as ``global_config``).

    For a tensor of an op in scope the spec is, highest priority first:
    ``module_state_spec`` (tensors owned by the scope module itself), the matching
    ``op_name_config`` entry, the matching ``op_type_config`` entry, then
    ``op_state_spec``. A ``None`` value anywhere means "leave uncompressed".

    ``on_incompatible`` decides what happens to a tensor whose spec cannot apply to
    its shape (a group size or ``cluster_dim`` that does not divide the channels, a
    missing axis): ``"error"`` fails before any work, naming the layer; ``"skip"``
    leaves it uncompressed; ``"fallback"`` uses the dividing group size nearest to
    the requested one (per-tensor when the axis is missing; skipped when no spec of
    the same bits fits). Unset (``None``): ``"error"`` for a layer named in
    ``module_name_configs``, ``"fallback"`` everywhere else. Every skipped or changed
    tensor is listed in the palettizer's report (``report().coverage``).

    ``algorithm`` names the registered palettizer that compresses this scope
    (``"kmeans"``, ``"sensitive_kmeans"``, ``"gptq"``, ``"dkm"``, a third-party one);
    ``None`` leaves the choice to whoever applies the config. ``options`` are that
    palettizer's own options (the options class of its ``config_class``, e.g.
    ``SKMOptions``; a mapping is built into that class), ``None`` for its defaults.
    Both are checked against the plugin registry when the config is built, and
    honoured by :func:`bitsmith.palettization.palettize`.
    """

    presets: ClassVar[_ModulePresets] = _ModulePresets()

    op_state_spec: dict[str, Optional[PalettizationSpec]] = field(
        factory=default_op_state_spec, validator=mapping_of("op_state_spec", PalettizationSpec)
    )
    op_type_config: dict[str, Optional[OpKMeansPalettizerConfig]] = field(
        factory=dict, converter=_type_keys("op_type_config"),  # type: ignore[misc]
        validator=mapping_of("op_type_config", OpKMeansPalettizerConfig)
    )
    op_name_config: dict[str, Optional[OpKMeansPalettizerConfig]] = field(
        factory=dict, validator=mapping_of("op_name_config", OpKMeansPalettizerConfig)
    )
    module_state_spec: dict[str, Optional[PalettizationSpec]] = field(
        factory=dict, validator=mapping_of("module_state_spec", PalettizationSpec)
    )
    on_incompatible: Optional[str] = field(default=None, validator=_on_incompatible)
    algorithm: Optional[str] = field(default=None, validator=_algorithms.check_name)
    options: Any = field(default=None)

    def __attrs_post_init__(self) -> None:
        self.options = _algorithms.build_options(self.algorithm, self.options)


class _ConfigPresets:
    """Ready-made ``KMeansPalettizerConfig`` objects whose global config is a module preset."""

    def __getattr__(self, name: str):
        make = getattr(ModuleKMeansPalettizerConfig.presets, name)

        def preset() -> "KMeansPalettizerConfig":
            return KMeansPalettizerConfig(global_config=make())

        preset.__doc__ = f"``KMeansPalettizerConfig`` with ``global_config=ModuleKMeansPalettizerConfig.presets.{name}()``."
        return preset

    def __dir__(self):
        return ["w2", "w3", "w4", "w6", "w8"]


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


UNSET = _Unset()


def _global(instance, attribute, value) -> None:
    if value is not UNSET and value is not None and not isinstance(value, ModuleKMeansPalettizerConfig):
        raise TypeError(f"global_config: expected a ModuleKMeansPalettizerConfig or None, got {value!r}")


@define(kw_only=True)
class KMeansPalettizerConfig:
    """Palettization config for a whole model.

    ``module_name_configs`` > ``module_type_configs`` > ``global_config``. With no
    arguments at all, ``global_config`` is ``ModuleKMeansPalettizerConfig()`` (4-bit
    for every supported layer). When only type/name configs are given and
    ``global_config`` is omitted, it is ``None``: every other module is skipped.
    Setters return the config so calls chain.
    """

    presets: ClassVar[_ConfigPresets] = _ConfigPresets()
    yaml_key: ClassVar[str] = "kmeans_palettization_config"
    """Top-level key of this class's YAML documents; a plugin's config class sets its own."""
    options_field: ClassVar[Optional[str]] = None
    """Name of the field holding the algorithm's own options (``"skm"``, ``"dkm"``), ``None`` if it has none."""

    global_config: Optional[ModuleKMeansPalettizerConfig] = field(default=UNSET, validator=_global)  # type: ignore[assignment]
    module_type_configs: dict[str, Optional[ModuleKMeansPalettizerConfig]] = field(
        factory=dict, converter=_type_keys("module_type_configs"),  # type: ignore[misc]
        validator=mapping_of("module_type_configs", ModuleKMeansPalettizerConfig)
    )
    module_name_configs: dict[str, Optional[ModuleKMeansPalettizerConfig]] = field(
        factory=dict, validator=mapping_of("module_name_configs", ModuleKMeansPalettizerConfig)
    )

    def __attrs_post_init__(self) -> None:
        if self.global_config is UNSET:
            scoped = bool(self.module_type_configs or self.module_name_configs)
            self.global_config = None if scoped else ModuleKMeansPalettizerConfig()

    @classmethod
    def options_class(cls) -> Optional[type]:
        """The attrs class of this config's algorithm options (the type of :attr:`options_field`), or ``None``."""
        if cls.options_field is None:
            return None
        attrs.resolve_types(cls)
        return attrs.fields_dict(cls)[cls.options_field].type

    @classmethod
    def from_specs(cls, config: "KMeansPalettizerConfig", options: Any = None) -> "KMeansPalettizerConfig":
        """This class holding ``config``'s specs (its three scope fields) and ``options`` (``None``: defaults).

        How a plain ``KMeansPalettizerConfig`` (a recipe's, or one scope of a mixed
        config) becomes the config of a palettizer with options of its own.
        """
        kwargs: dict[str, Any] = {"global_config": config.global_config,
                                  "module_type_configs": dict(config.module_type_configs),
                                  "module_name_configs": dict(config.module_name_configs)}
        if cls.options_field is not None:
            if options is not None:
                kwargs[cls.options_field] = options
        elif options is not None:
            raise ValueError(f"options: {cls.__name__} takes no algorithm options, got {options!r}")
        return cls(**kwargs)

    def scopes(self) -> list[tuple[str, ModuleKMeansPalettizerConfig]]:
        """Every scope config with its dotted path (``global_config``, ``module_name_configs.fc``, ...)."""
        out = [("global_config", self.global_config)] if isinstance(self.global_config,
                                                                     ModuleKMeansPalettizerConfig) else []
        for field_name in ("module_type_configs", "module_name_configs"):
            out += [(f"{field_name}.{key}", cfg) for key, cfg in getattr(self, field_name).items() if cfg is not None]
        return out

    def algorithms(self) -> set[Optional[str]]:
        """The algorithms the scopes name (``None`` for a scope that names none)."""
        return {cfg.algorithm for _, cfg in self.scopes()}

    def check_algorithm(self, algorithm: str) -> None:
        """Raise :class:`ConfigError` naming the scope when a scope asks for another algorithm than ``algorithm``.

        A palettizer class runs one algorithm; a config that names several is
        applied with :func:`bitsmith.palettization.palettize`.
        """
        from ..errors import ConfigError

        wrong = [f"{path}.algorithm: {cfg.algorithm!r} is not {algorithm!r}, the algorithm of this palettizer; "
                 "apply a config that names several algorithms with bitsmith.palettization.palettize(model, config, "
                 "calibration_data)" for path, cfg in self.scopes()
                 if cfg.algorithm is not None and cfg.algorithm != algorithm]
        if wrong:
            raise ConfigError(wrong)

    def set_global(self, config: Optional[ModuleKMeansPalettizerConfig]) -> "KMeansPalettizerConfig":
        """Replace ``global_config``; returns ``self``."""
        _global(self, None, config)
        self.global_config = config
        return self

    def set_module_type(self, module_type, config: Optional[ModuleKMeansPalettizerConfig]) -> "KMeansPalettizerConfig":
        """Set the config of a module class (class or dotted name); ``None`` skips it. Returns ``self``."""
        mapping_of("module_type_configs", ModuleKMeansPalettizerConfig)(self, None, {"": config})
        self.module_type_configs.update(_type_keys("module_type_configs")({module_type: config}))
        return self

    def set_module_name(self, module_name: str, config: Optional[ModuleKMeansPalettizerConfig]) -> "KMeansPalettizerConfig":
        """Set the config of a module by qualified name or full-match regex; ``None`` skips it. Returns ``self``."""
        mapping_of("module_name_configs", ModuleKMeansPalettizerConfig)(self, None, {"": config})
        self.module_name_configs[module_name] = config
        return self
