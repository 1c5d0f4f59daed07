"""Typed protocols every registered implementation satisfies.

A plugin author implements one of these and registers it through the matching hook
in :mod:`bitsmith.hookspecs` (:data:`PROTOCOLS`). Every attribute and method the core
touches is a member of one of them; optional capabilities are protocols of their
own (:data:`OPTIONAL_CAPABILITIES`), detected only by ``isinstance``. The registry
refuses, at registration, an implementation that does not conform
(:func:`conformance`); ``bitsmith.testing`` has behavioural contract checks
(``check_clusterer`` …) for plugin authors' tests.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch
from attrs import define, field
from torch import nn


@runtime_checkable
class Clusterer(Protocol):
    """Clusters the rows of ``x`` (n, d), float32, into at most ``k`` centroids.

    Returns ``(centroids, labels)``: centroids (m, d) float32 with ``m <= k`` (fewer
    when ``x`` has fewer distinct rows; never an empty cluster) and labels (n,) int64
    in ``[0, m)``. ``sample_weight`` (n,), non-negative, weights each row's squared
    error (a clusterer that only makes sense weighted may raise ``ValueError`` for
    ``None``); ``seed`` makes randomized clusterers reproducible. Must be deterministic
    for a given input and seed, and picklable (it may run in worker processes).
    """

    def __call__(self, x: torch.Tensor, k: int, *, sample_weight: Optional[torch.Tensor] = None,
                 seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class SensitivityMetric(Protocol):
    """Scores a model's outputs against reference (uncompressed) outputs.

    ``higher_is_better`` says how to read ``score``; ``unit`` labels it (``"dB"``).
    ``to_distortion(score)`` maps a score to a non-negative distortion that adds up
    across independently compressed layers (e.g. PSNR dB -> relative noise power),
    lower is better; recipe searches minimise its sum.
    """

    higher_is_better: bool
    unit: str

    def score(self, reference: torch.Tensor, output: torch.Tensor) -> float: ...

    def to_distortion(self, score: float) -> float: ...


@runtime_checkable
class InvertibleMetric(SensitivityMetric, Protocol):
    """A metric that can also turn a summed distortion back into a score (optional capability).

    ``from_distortion(distortion)`` inverts ``to_distortion``; recipes use it to
    predict the whole model's score from the summed per-layer distortions
    (``Recipe.predicted_score``). Detected with ``isinstance(metric, InvertibleMetric)``.
    """

    def from_distortion(self, distortion: float) -> float: ...


@define(frozen=True)
class RecipeProblem:
    """A multiple-choice knapsack: pick one option per layer, total cost within ``budget``.

    ``costs[i][j]`` is the size in bits of option ``j`` for layer ``i`` (all-in:
    indices, LUTs, scales); ``distortions[i][j]`` its additive distortion (lower is
    better). ``budget`` is the total number of bits allowed.
    """

    layers: Sequence[str]
    costs: Sequence[Sequence[float]]
    distortions: Sequence[Sequence[float]]
    budget: float = field()

    def __attrs_post_init__(self) -> None:
        if not (len(self.layers) == len(self.costs) == len(self.distortions)):
            raise ValueError("layers, costs and distortions must have one entry per layer")
        for name, c, d in zip(self.layers, self.costs, self.distortions):
            if len(c) != len(d) or not c:
                raise ValueError(f"layer {name!r}: costs and distortions need the same, non-zero number of options")

    def cost(self, choice: Sequence[int]) -> float:
        """Total bits of a choice (one option index per layer)."""
        return float(sum(self.costs[i][j] for i, j in enumerate(choice)))

    def distortion(self, choice: Sequence[int]) -> float:
        """Total distortion of a choice."""
        return float(sum(self.distortions[i][j] for i, j in enumerate(choice)))

    def min_cost(self) -> float:
        """The cheapest possible total (every layer at its smallest option)."""
        return float(sum(min(c) for c in self.costs))


@runtime_checkable
class RecipeSearch(Protocol):
    """Solves a :class:`RecipeProblem`: returns one option index per layer.

    Must return a choice whose cost is within the budget whenever
    ``problem.min_cost() <= problem.budget``; otherwise raise ``ValueError``.
    """

    def __call__(self, problem: RecipeProblem) -> list[int]: ...


@runtime_checkable
class ExportBackendImpl(Protocol):
    """Turns a model carrying compressed-weight records (:mod:`bitsmith.compressed`) into a deployable model.

    ``finalize(model)`` returns the exported model (it may modify ``model`` in
    place; callers pass a copy when they need the original). File-producing backends
    also offer ``save(model, path, *, example_inputs=None) -> pathlib.Path``.
    """

    description: str

    def finalize(self, model: nn.Module) -> nn.Module: ...


@runtime_checkable
class FileExportBackend(ExportBackendImpl, Protocol):
    """A backend that writes files (optional capability; ``bitsmith compress`` and pipelines use it).

    ``suffix`` is the file suffix it writes, with the dot (``".safetensors"``);
    ``save(model, path, *, example_inputs=None)`` writes the finalized ``model`` to
    ``path`` and returns the path written. Detected with
    ``isinstance(backend, FileExportBackend)``.
    """

    suffix: str

    def save(self, model: nn.Module, path: Any, *, example_inputs: Any = None) -> Any: ...


@runtime_checkable
class ReadableExportBackend(FileExportBackend, Protocol):
    """A file backend that also reads its files back (``bitsmith.load(path, model_factory)``).

    ``load(path, model_factory)`` builds the architecture with ``model_factory()``
    and returns it with the file's weights and compressed-weight records attached.
    Detected with ``isinstance(backend, ReadableExportBackend)``.
    """

    def load(self, path: Any, model_factory: Any) -> nn.Module: ...


@runtime_checkable
class Palettizer(Protocol):
    """A model-level palettizer: ``prepare`` compresses, ``finalize`` exports, ``report`` summarises."""

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module: ...

    def finalize(self, backend: Any = "coreai", **kwargs: Any) -> nn.Module: ...

    def report(self) -> Any: ...


@runtime_checkable
class DataDrivenPalettizer(Palettizer, Protocol):
    """A palettizer that needs calibration data (optional capability: SKM, GPTQ).

    ``sensitivity`` is ``None`` until ``compute_sensitivity(data)`` has calibrated the
    palettizer on ``data`` (a list of batches) and kept what it learned there; the
    mixed-precision sensitivity stage calls it once with its calibration data.
    Detected with ``isinstance(palettizer, DataDrivenPalettizer)``.
    """

    sensitivity: Any

    def compute_sensitivity(self, data: Any) -> Any: ...


@runtime_checkable
class PalettizerFactory(Protocol):
    """A palettizer class: ``cls(model, config=None)`` returning a :class:`Palettizer`.

    Optional capabilities: a ``config_class`` (:class:`Configurable`) and a
    ``registry=`` keyword (:func:`accepts_registry`).
    """

    def __call__(self, model: nn.Module, config: Any = None) -> Palettizer: ...


@runtime_checkable
class Configurable(Protocol):
    """A palettizer or quantizer class that names its config class (optional capability).

    ``config_class`` is an attrs class: ``KMeansPalettizerConfig`` or a subclass (for
    palettizers), ``QuantizerConfig`` or a subclass (for quantizers), with its own
    ``yaml_key`` (its YAML section, validated in any process through the registry)
    and, when the algorithm has options, an ``options_field``. Without it the core
    uses ``KMeansPalettizerConfig`` / ``QuantizerConfig``. Detected with
    :func:`config_class_of`.
    """

    config_class: type


@runtime_checkable
class Quantizer(Protocol):
    """A model-level quantizer: ``prepare``, ``calibration_mode()``, ``finalize``."""

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module: ...

    def calibration_mode(self) -> contextlib.AbstractContextManager: ...

    def finalize(self, backend: Any = "coreai", **kwargs: Any) -> nn.Module: ...


@runtime_checkable
class QuantizerFactory(Protocol):
    """A quantizer class: ``cls(model, config=None)`` returning a :class:`Quantizer`.

    Optional capabilities as for palettizers: :class:`Configurable`, :func:`accepts_registry`.
    """

    def __call__(self, model: nn.Module, config: Any = None) -> Quantizer: ...


@runtime_checkable
class Observer(Protocol):
    """Tracks the range of the tensors it sees; ``observe`` during calibration.

    ``observe(x, reduce_dims)`` updates the state from a tensor, reducing over
    ``reduce_dims`` (all dims for per-tensor); ``bounds()`` returns ``(min, max)``
    tensors, or raises ``RuntimeError`` if nothing was observed yet.
    """

    def observe(self, x: torch.Tensor, reduce_dims: Sequence[int]) -> None: ...

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class ObserverFactory(Protocol):
    """What the ``observer`` hook registers: ``factory()`` returns a new :class:`Observer`."""

    def __call__(self) -> Observer: ...


PROTOCOLS: dict[str, type] = {
    "cluster": Clusterer,
    "sensitivity_metric": SensitivityMetric,
    "recipe_search": RecipeSearch,
    "export_backend": ExportBackendImpl,
    "palettizer": PalettizerFactory,
    "quantizer": QuantizerFactory,
    "observer": ObserverFactory,
}
"""The protocol an implementation registered through each hook satisfies."""

OPTIONAL_CAPABILITIES: dict[str, tuple[type, ...]] = {
    "sensitivity_metric": (InvertibleMetric,),
    "export_backend": (FileExportBackend, ReadableExportBackend),
    "palettizer": (Configurable, DataDrivenPalettizer),
    "quantizer": (Configurable,),
}
"""Optional capabilities per hook, each detected one way: ``isinstance(impl, Capability)``
(``DataDrivenPalettizer`` on the instance), plus :func:`accepts_registry` for factories."""


def config_class_of(factory: Any, default: type) -> Any:
    """The config class a palettizer/quantizer class takes: its ``config_class`` (:class:`Configurable`), else ``default``."""
    return factory.config_class if isinstance(factory, Configurable) else default


def accepts_registry(factory: Any) -> bool:
    """Whether a palettizer/quantizer class takes the ``registry=`` keyword (the one way the core asks)."""
    sig = _signature(factory)
    return sig is not None and ("registry" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()))


def instantiate(factory: Any, model: nn.Module, config: Any, registry: Any = None) -> Any:
    """``factory(model, config)``, with ``registry=registry`` when the factory takes it."""
    if registry is not None and accepts_registry(factory):
        return factory(model, config, registry=registry)
    return factory(model, config)


def _signature(obj: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None  # a builtin or C callable: not inspectable, trusted


def _accepts(obj: Any, positional: int, keywords: Sequence[str]) -> list[str]:
    """Why ``obj(*positional args, **keywords)`` would not bind (empty when it would)."""
    sig = _signature(obj)
    if sig is None:
        return []
    try:
        sig.bind(*range(positional), **{k: None for k in keywords})
    except TypeError as exc:
        shown = ", ".join(["arg"] * positional + [f"{k}=..." for k in keywords])
        return [f"cannot be called as ({shown}): {exc}"]
    return []


def _config_class(impl: Any, base_name: str) -> list[str]:
    from . import config

    if not isinstance(impl, Configurable):
        return []
    base = getattr(config, base_name)
    cls = impl.config_class
    if not isinstance(cls, type) or not issubclass(cls, base):
        return [f"config_class must be {base_name} or a subclass of it, got {cls!r}"]
    if not isinstance(getattr(cls, "yaml_key", None), str):
        return [f"config_class {cls.__name__} has no yaml_key string"]
    return []


def protocol_members(protocol: type) -> list[str]:
    """The public members (attributes and methods) a protocol declares, its bases' included, sorted."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if not getattr(base, "_is_protocol", False) or base is Protocol:
            continue
        names |= {n for n in getattr(base, "__annotations__", {}) if not n.startswith("_")}
        names |= {n for n, v in vars(base).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def _members(impl: Any, protocol: type) -> list[str]:
    return [f"missing {name!r}" for name in protocol_members(protocol) if not hasattr(impl, name)]


def conformance(kind: str, impl: Any) -> list[str]:
    """What keeps ``impl`` from satisfying the protocol of hook ``kind`` (empty: it conforms).

    Structural only (nothing is run): members present, callables that bind the
    documented arguments, data members of the documented type, and for optional
    capabilities all-or-nothing (a backend with ``save`` needs ``suffix``).
    """
    if kind not in PROTOCOLS:
        raise KeyError(f"unknown hook {kind!r}; hooks: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[kind]
    if kind in ("sensitivity_metric", "export_backend") and (inspect.isfunction(impl) or inspect.isclass(impl)):
        what = "a function" if inspect.isfunction(impl) else "a class"
        return [f"{what} is not a {protocol.__name__}: register an instance with "
                f"{', '.join(protocol_members(protocol))}"]
    if kind in ("cluster", "recipe_search", "palettizer", "quantizer", "observer") and not callable(impl):
        return [f"expected a callable {protocol.__name__}, got {type(impl).__name__}"]
    if kind == "cluster":
        return _accepts(impl, 2, ("sample_weight", "seed"))
    if kind == "recipe_search":
        return _accepts(impl, 1, ())
    if kind == "observer":
        return _accepts(impl, 0, ())
    if kind in ("palettizer", "quantizer"):
        base = "KMeansPalettizerConfig" if kind == "palettizer" else "QuantizerConfig"
        return _config_class(impl, base) + _accepts(impl, 2, ())
    problems = _members(impl, protocol)
    if kind == "sensitivity_metric":
        if not isinstance(getattr(impl, "higher_is_better", None), bool):
            problems.append("higher_is_better must be a bool")
        if not isinstance(getattr(impl, "unit", None), str):
            problems.append("unit must be a string")
        for name in ("score", "to_distortion", "from_distortion"):
            if hasattr(impl, name):
                if not callable(getattr(impl, name)):
                    problems.append(f"{name} must be callable")
                else:
                    problems += _accepts(getattr(impl, name), 2 if name == "score" else 1, ())
    if kind == "export_backend":
        if not isinstance(getattr(impl, "description", None), str):
            problems.append("description must be a string")
        if hasattr(impl, "finalize"):
            problems += _accepts(impl.finalize, 1, ())
        file_members = [n for n in ("suffix", "save") if hasattr(impl, n)]
        if file_members and len(file_members) < 2 or hasattr(impl, "load") and len(file_members) < 2:
            problems.append("a file backend needs both suffix and save (and load to read files back)")
        if hasattr(impl, "suffix") and not (isinstance(impl.suffix, str) and impl.suffix.startswith(".")):
            problems.append(f"suffix must be a string starting with '.', got {impl.suffix!r}")
        if hasattr(impl, "save"):
            problems += _accepts(impl.save, 2, ("example_inputs",))
        if hasattr(impl, "load"):
            problems += _accepts(impl.load, 2, ())
    return problems
