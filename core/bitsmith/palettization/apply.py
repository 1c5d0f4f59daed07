"""Apply a palettization config that names the algorithm per layer: :func:`palettize`.

A ``KMeansPalettizerConfig`` scope may say ``algorithm: sensitive_kmeans`` (and that
algorithm's ``options``). :func:`split_by_algorithm` cuts the config into one plain
config per (algorithm, options): the scopes of the other parts become ``None``, so
seed 003's precedence decides every tensor exactly as in the whole config.
:func:`palettize` runs each part's registered palettizer on the original model (data
driven ones calibrate on ``example_inputs``, as the mixed-precision sensitivity stage
does) and moves the palettized records onto one copy. So ``recipe.to_config()``
applied here gives the model :func:`~bitsmith.mixed_precision.apply_recipe` gives.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

import attrs
from attrs import define
from torch import nn

from .. import compressed, plugins
from ..coverage import IncompatibleLayerWarning, LowCoverageWarning, check_coverage
from ..config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, load
from ..errors import CompressionError
from ..protocols import config_class_of, instantiate

__all__ = ["AlgorithmPart", "palettize", "split_by_algorithm", "transplant_record"]


@define(frozen=True)
class AlgorithmPart:
    """The scopes of a config that one algorithm compresses with one set of options.

    ``config`` holds only this part's scopes (every other scope is ``None``), with
    ``algorithm``/``options`` cleared: it is what the palettizer class receives.
    """

    algorithm: str
    options: Any
    config: KMeansPalettizerConfig


def split_by_algorithm(config: KMeansPalettizerConfig, default_algorithm: str = "kmeans") -> list[AlgorithmPart]:
    """One :class:`AlgorithmPart` per distinct (algorithm, options), in the order the scopes name them.

    A scope naming no algorithm belongs to ``default_algorithm``.
    """
    keys: list[tuple[str, Any]] = []
    for _, scope in config.scopes():
        key = (scope.algorithm or default_algorithm, scope.options)
        if key not in keys:
            keys.append(key)

    def keep(scope: Optional[ModuleKMeansPalettizerConfig], key: tuple[str, Any]) -> Optional[ModuleKMeansPalettizerConfig]:
        if scope is None or (scope.algorithm or default_algorithm, scope.options) != key:
            return None
        return attrs.evolve(scope, algorithm=None, options=None)

    return [AlgorithmPart(algorithm=key[0], options=key[1], config=KMeansPalettizerConfig(
        global_config=keep(config.global_config, key),
        module_type_configs={name: keep(scope, key) for name, scope in config.module_type_configs.items()},
        module_name_configs={name: keep(scope, key) for name, scope in config.module_name_configs.items()}))
        for key in keys]


def palettize(model: nn.Module, config: Any = None, example_inputs: Any = None, *, default_algorithm: str = "kmeans",
              registry: Optional[plugins.Registry] = None, inplace: bool = False, **prepare_kwargs: Any) -> nn.Module:
    """Compress ``model`` as ``config`` says, each scope with the algorithm it names; returns the model.

    :param model: the model (a copy is returned unless ``inplace``).
    :param config: a ``KMeansPalettizerConfig`` (or a dict, YAML text or path); ``None``
        for the default 4-bit config.
    :param example_inputs: calibration batches for data-driven palettizers
        (``sensitive_kmeans``, ``gptq``); each calibrates on the uncompressed model.
    :param default_algorithm: the palettizer of scopes that name none.
    :param registry: plugin registry (default: the process-wide one).
    :param prepare_kwargs: passed to every palettizer's ``prepare`` (``progress``,
        ``num_workers``, ``executor``).

    With one algorithm this is ``cls(model, config).prepare(example_inputs)``. With
    several, each palettizer works on the original model and its palettized records
    are moved onto one copy; a palettizer that attaches no records there (a
    training-time one such as ``dkm``) must then be the config's only algorithm.
    """
    registry = registry or plugins.default_registry()
    config = KMeansPalettizerConfig() if config is None else load(config, KMeansPalettizerConfig)
    parts = split_by_algorithm(config, default_algorithm)
    palettizers = [_palettizer(model, part, registry) for part in parts]  # every name and option checked first
    if len(palettizers) == 1:
        return palettizers[0].prepare(example_inputs, inplace=inplace, **prepare_kwargs)
    out = model if inplace else copy.deepcopy(model)
    for part, palettizer in zip(parts, palettizers):
        with warnings.catch_warnings():  # each part covers only its own scopes: coverage is judged on the whole below
            warnings.simplefilter("ignore", LowCoverageWarning)
            warnings.simplefilter("ignore", IncompatibleLayerWarning)
            prepared = palettizer.prepare(example_inputs, **prepare_kwargs)
        moved = 0
        for name, _, tensor, record in compressed.iter_records(prepared):
            if isinstance(record, compressed.PalettizedTensor):
                transplant_record(out, name, tensor, record)
                moved += 1
        if not moved:
            raise CompressionError(f"palettizer {part.algorithm!r} attached no palettized record to the layers it was "
                                   "given; a training-time palettizer must be the only algorithm of its config")
    check_coverage(out, config, {name: note for p in palettizers for name, note in getattr(p, "plan_notes", {}).items()})
    return out


def _palettizer(model: nn.Module, part: AlgorithmPart, registry: plugins.Registry) -> Any:
    cls = registry.get("palettizer", part.algorithm)
    config = config_class_of(cls, KMeansPalettizerConfig).from_specs(part.config, part.options)
    return instantiate(cls, model, config, registry)


def transplant_record(model: nn.Module, module_name: str, tensor: str, record: compressed.PalettizedTensor) -> None:
    """Attach ``record`` to ``model``'s ``module_name.tensor`` and put its values in effect.

    Every other module holding the same parameter (tied weights) gets the record attached too.
    """
    module = model.get_submodule(module_name)
    target = getattr(module, tensor)
    for owner in model.modules():
        for pname, p in owner.named_parameters(recurse=False):
            if p is target and owner is not module:
                compressed.attach(owner, pname, record)
    compressed.apply(module, tensor, record)
