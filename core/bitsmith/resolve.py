"""Which spec applies to each tensor of a model: seed 003's precedence rules.

Scope: a module is governed by the nearest module (itself first, then its parents)
named in ``module_name_configs`` (exact name, or a full-match regex); failing that,
by the nearest one whose class (or a base class) is in ``module_type_configs``;
failing that, by ``global_config``. A ``None`` config at that level means "skip".

Within the governing config, a tensor's spec is, highest priority first:
``module_state_spec`` (tensors owned by the scope module itself), the op's entry in
``op_name_config`` (name relative to the scope, or the full name), the op's entry in
``op_type_config``, then ``op_state_spec``.

Only layers of :data:`PALETTIZABLE_TYPES` (and the classes named in
:data:`PALETTIZABLE_TYPE_NAMES`, such as transformers' ``Conv1D``) are compressed
through ``global_config``; any other module is compressed only when a name or type
config names it explicitly.

Granularity axes of palettization specs are *semantic*: axis 0 is a layer's output
channels, axis 1 its input channels. For layers whose weight stores the output
channels on dim 1 (:func:`output_channel_dim`: transformers ``Conv1D``, transposed
convolutions) the resolved spec's axis is rewritten to the weight's own dim, so
records, backends and sizes only ever see tensor dims.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable, Iterator, Optional

import attrs
from attrs import define
import torch
from torch import nn

from .config.module_types import canonical_name, type_names
from .config.palettization import ON_INCOMPATIBLE
from .config.specs import PalettizationSpec, PerGroupedChannelGranularity
from .errors import CompressionError

PALETTIZABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Embedding, nn.MultiheadAttention,
)
"""Layer types compressed by a ``global_config`` (subclasses included)."""

PALETTIZABLE_TYPE_NAMES: frozenset[str] = frozenset({"transformers.pytorch_utils.Conv1D"})
"""Layer classes (by dotted name, subclasses included) compressed by a ``global_config``
without importing their library: transformers' ``Conv1D`` (GPT-2's linear layers)."""

TRANSPOSED_WEIGHT_TYPE_NAMES: frozenset[str] = frozenset({
    "transformers.pytorch_utils.Conv1D", *(canonical_name(t) for t in (
        nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))})
"""Layer classes (by dotted name) whose ``weight`` holds the output channels on dim 1:
``Conv1D`` stores ``(in, out)``, transposed convolutions ``(in, out / groups, *kernel)``."""

def is_palettizable(module: nn.Module) -> bool:
    """True for the layer types a ``global_config`` compresses (see :data:`PALETTIZABLE_TYPES`)."""
    return isinstance(module, PALETTIZABLE_TYPES) or not PALETTIZABLE_TYPE_NAMES.isdisjoint(type_names(type(module)))


def output_channel_dim(module: nn.Module) -> int:
    """The dim of ``module.weight`` that holds the output channels: 1 for ``Conv1D`` and transposed convs, else 0."""
    return 1 if not TRANSPOSED_WEIGHT_TYPE_NAMES.isdisjoint(type_names(type(module))) else 0


def tensor_spec(module: nn.Module, tensor_name: str, spec: Any) -> Any:
    """``spec`` with a semantic granularity axis (0: output, 1: input channels) rewritten to ``tensor_name``'s dim.

    Only palettization specs of a ``weight`` whose layer stores output channels on
    dim 1 change; everything else is returned as is.
    """
    if tensor_name != "weight" or not isinstance(spec, PalettizationSpec) or output_channel_dim(module) == 0:
        return spec
    gran = spec.granularity
    if isinstance(gran, PerGroupedChannelGranularity) and gran.axis in (0, 1):
        return attrs.evolve(spec, granularity=attrs.evolve(gran, axis=1 - gran.axis))
    return spec


class UnmatchedConfigWarning(UserWarning):
    """A name or type key in a config matches no module of the model."""


@define(frozen=True)
class ResolvedTensor:
    """One state tensor of one module and the spec that applies (``None``: left as is).

    ``rule`` says which config entry decided, e.g. ``module_name_configs['fc']`` ->
    ``op_state_spec['weight']``. ``on_incompatible`` is the governing config's policy
    for a spec that does not fit the tensor (one of :data:`ON_INCOMPATIBLE`).
    """

    module_name: str
    module: nn.Module
    tensor_name: str
    spec: Any
    rule: str
    on_incompatible: str = "error"

    @property
    def qualified_name(self) -> str:
        """``module.tensor``, e.g. ``features.0.0.weight``."""
        return f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name


def _name_matches(key: str, name: str) -> bool:
    if key == name:
        return True
    try:
        return re.fullmatch(key, name) is not None
    except re.error:
        return False


def _lookup_name(table: dict, name: str) -> tuple[bool, Optional[str]]:
    if name in table:
        return True, name
    for key in table:
        if _name_matches(key, name):
            return True, key
    return False, None


def _lookup_type(table: dict, module: nn.Module) -> tuple[bool, Optional[str]]:
    for tname in type_names(type(module)):
        if tname in table:
            return True, tname
    return False, None


@define(frozen=True)
class Scope:
    """The config governing a module, where it came from, and the scope module's name."""

    config: Any
    scope_name: str
    rule: str


def _parents(name: str) -> list[str]:
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def governing_scope(model_config: Any, modules: dict[str, nn.Module], name: str) -> Optional[Scope]:
    """The scope config that governs module ``name``; ``None`` if the module is skipped.

    ``model_config`` is a ``KMeansPalettizerConfig`` or ``QuantizerConfig``-shaped
    object (``global_config``, ``module_type_configs``, ``module_name_configs``).
    """
    chain = [n for n in _parents(name) if n in modules]
    for scope in chain:
        found, key = _lookup_name(model_config.module_name_configs, scope)
        if found:
            return Scope(model_config.module_name_configs[key], scope, f"module_name_configs[{key!r}]")
    for scope in chain:
        found, key = _lookup_type(model_config.module_type_configs, modules[scope])
        if found:
            return Scope(model_config.module_type_configs[key], scope, f"module_type_configs[{key!r}]")
    return Scope(model_config.global_config, "", "global_config")


def op_config(scope_config: Any, scope_name: str, name: str, module: nn.Module) -> tuple[bool, Any, str]:
    """The op-level config for ``module`` inside a scope: ``(found, config, rule)``."""
    relative = name[len(scope_name) + 1:] if scope_name and name.startswith(scope_name + ".") else (
        "" if name == scope_name else name)
    for candidate in dict.fromkeys([relative, name]):
        found, key = _lookup_name(scope_config.op_name_config, candidate)
        if found and candidate != "":
            return True, scope_config.op_name_config[key], f"op_name_config[{key!r}]"
    found, key = _lookup_type(scope_config.op_type_config, module)
    if found:
        return True, scope_config.op_type_config[key], f"op_type_config[{key!r}]"
    return False, None, ""


def resolve_state_specs(model: nn.Module, config: Any, *, warn_unmatched: bool = True,
                        spec_field: str = "op_state_spec") -> Iterator[ResolvedTensor]:
    """Yield a :class:`ResolvedTensor` for every direct parameter of every module.

    ``config`` is a ``KMeansPalettizerConfig`` (or a ``QuantizerConfig``: weights
    only). Tied parameters are yielded for each owner; callers dedupe by identity.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    if warn_unmatched:
        warn_unmatched_keys(model, config)
    for name, module in modules.items():
        params = [(pname, p) for pname, p in module.named_parameters(recurse=False)]
        if not params:
            continue
        scope = governing_scope(config, modules, name)
        policy = _policy(scope)
        for pname, _ in params:
            spec, rule = _tensor_spec(scope, name, module, pname, spec_field)
            yield ResolvedTensor(name, module, pname, tensor_spec(module, pname, spec), rule, policy)


def _policy(scope: Optional[Scope]) -> str:
    """``on_incompatible`` of the scope config; unset means ``error`` for a layer named in
    ``module_name_configs`` and ``fallback`` for broad rules (``global_config``, module types, presets)."""
    value = getattr(scope.config, "on_incompatible", None) if scope is not None else None
    if value is not None:
        return value
    return "error" if scope is not None and scope.rule.startswith("module_name_configs") else "fallback"


def _tensor_spec(scope: Optional[Scope], name: str, module: nn.Module, pname: str, spec_field: str) -> tuple[Any, str]:
    if scope is None or scope.config is None:
        return None, f"{scope.rule} is None" if scope else "skipped"
    cfg = scope.config
    explicit = scope.rule != "global_config" and scope.scope_name == name
    if name == scope.scope_name and pname in getattr(cfg, "module_state_spec", {}):
        return cfg.module_state_spec[pname], f"{scope.rule}.module_state_spec[{pname!r}]"
    found, opcfg, oprule = op_config(cfg, scope.scope_name, name, module)
    if found:
        if opcfg is None:
            return None, f"{scope.rule}.{oprule} is None"
        return _lookup(getattr(opcfg, spec_field), pname, f"{scope.rule}.{oprule}.{spec_field}")
    if not explicit and not is_palettizable(module):
        return None, f"{type(module).__name__} is not a palettizable layer type"
    return _lookup(getattr(cfg, spec_field), pname, f"{scope.rule}.{spec_field}")


def _lookup(table: Any, pname: str, where: str) -> tuple[Any, str]:
    """``(spec, rule)`` of tensor ``pname`` in the spec mapping found at ``where``; a missing key says so."""
    if table is None:
        return None, f"{where} is None"
    if pname in table:
        return table[pname], f"{where}[{pname!r}]"
    return None, f"{where} has no entry for {pname!r}"


ACTIVATION_DIRECTIONS = ("input", "output")
"""The two kinds of activation a module has: its positional inputs and its outputs."""


def _io_lookup(table: Optional[dict], index: int) -> tuple[bool, Any, Optional[str]]:
    if not table:
        return False, None, None
    for key in (str(index), "*"):
        if key in table:
            return True, table[key], key
    return False, None, None


def resolve_activation_spec(model_config: Any, modules: dict[str, nn.Module], name: str, direction: str,
                            index: int) -> tuple[Any, str]:
    """The spec for positional input / output ``index`` of module ``name``: ``(spec, rule)``.

    ``model_config`` is a ``QuantizerConfig``-shaped object; ``modules`` is
    ``dict(model.named_modules(remove_duplicate=False))``; ``direction`` is
    ``"input"`` or ``"output"``. Keys of the spec tables are the index as a string
    or ``"*"`` (the exact index wins over ``"*"`` within one table). Highest
    priority first: the scope's ``module_input_spec``/``module_output_spec`` (for
    the scope module itself, container or not), then, for leaf modules only (ops),
    the matching ``op_name_config``/``op_type_config`` entry's
    ``op_input_spec``/``op_output_spec`` (decisive once matched, even without the
    key), then the scope's ``op_input_spec``/``op_output_spec`` for
    :data:`PALETTIZABLE_TYPES` layers (or any leaf the scope names explicitly).
    ``None`` means the activation stays float.
    """
    if direction not in ACTIVATION_DIRECTIONS:
        raise ValueError(f"direction: {direction!r} is not one of {', '.join(ACTIVATION_DIRECTIONS)}")
    module = modules[name]
    scope = governing_scope(model_config, modules, name)
    if scope is None or scope.config is None:
        return None, f"{scope.rule} is None" if scope else "skipped"
    cfg = scope.config
    if name == scope.scope_name:
        found, spec, key = _io_lookup(getattr(cfg, f"module_{direction}_spec", None), index)
        if found:
            return spec, f"{scope.rule}.module_{direction}_spec[{key!r}]"
    if next(iter(module.children()), None) is not None:
        return None, f"{type(module).__name__} is a container; only module_{direction}_spec applies to it"
    field_name = f"op_{direction}_spec"
    found, opcfg, oprule = op_config(cfg, scope.scope_name, name, module)
    if found:
        if opcfg is None:
            return None, f"{scope.rule}.{oprule} is None"
        hit, spec, key = _io_lookup(getattr(opcfg, field_name), index)
        return (spec, f"{scope.rule}.{oprule}.{field_name}[{key!r}]") if hit else (
            None, f"{scope.rule}.{oprule}.{field_name} has no entry for {index}")
    explicit = scope.rule != "global_config" and scope.scope_name == name
    if not explicit and not is_palettizable(module):
        return None, f"{type(module).__name__} is not a palettizable layer type"
    hit, spec, key = _io_lookup(getattr(cfg, field_name), index)
    return (spec, f"{scope.rule}.{field_name}[{key!r}]") if hit else (
        None, f"{scope.rule}.{field_name} has no entry for {index}")


def warn_unmatched_keys(model: nn.Module, config: Any) -> list[str]:
    """Warn once about name/type keys of ``config`` that match no module; returns them."""
    modules = dict(model.named_modules(remove_duplicate=False))
    present_types = {t for m in modules.values() for t in type_names(type(m))}
    unmatched = [f"module_name_configs[{k!r}]" for k in config.module_name_configs
                 if not any(_name_matches(k, n) for n in modules)]
    unmatched += [f"module_type_configs[{k!r}]" for k in config.module_type_configs if k not in present_types]
    for key in unmatched:
        warnings.warn(f"bitsmith: config key {key} matches no module of {type(model).__name__}",
                      UnmatchedConfigWarning, stacklevel=3)
    return unmatched


def palettizable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers a default config compresses, in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if is_palettizable(m)]


__all__ = ["ACTIVATION_DIRECTIONS", "ON_INCOMPATIBLE", "PALETTIZABLE_TYPES", "PALETTIZABLE_TYPE_NAMES",
           "ResolvedTensor", "Scope", "TRANSPOSED_WEIGHT_TYPE_NAMES", "UnmatchedConfigWarning", "canonical_name",
           "governing_scope", "is_palettizable", "op_config", "output_channel_dim", "palettizable_modules",
           "resolve_activation_spec", "resolve_state_specs", "tensor_spec", "warn_unmatched_keys"]


def check_materialized(named_tensors: Iterable[tuple[str, torch.Tensor]], action: str) -> None:
    """Refuse, naming them, tensors on the ``meta`` device: they have no values to ``action``.

    :raises CompressionError: listing every such tensor (the first ten by name).
    """
    meta = [name for name, tensor in named_tensors if tensor.is_meta]
    if meta:
        shown = ", ".join(meta[:10]) + (f", ... ({len(meta)} in all)" if len(meta) > 10 else "")
        raise CompressionError(f"cannot {action}: weights on the meta device have no values ({shown}); "
                               "materialize the model first (e.g. model.to_empty(device='cpu') and load_state_dict)")
