"""Typed protocols every registered implementation satisfies.

A plugin author implements one of these and registers it through the matching hook
in :mod:`bitsmith.hookspecs`. ``bitsmith.testing`` has contract checks
(``check_clusterer`` …) that exercise an implementation against its protocol.
"""

from __future__ import annotations

import contextlib
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
    error; ``seed`` makes randomized clusterers reproducible. Must be deterministic
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
class Palettizer(Protocol):
    """A model-level palettizer: ``prepare`` compresses, ``finalize`` exports, ``report`` summarises."""

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module: ...

    def finalize(self, backend: Any = "coreai", **kwargs: Any) -> nn.Module: ...

    def report(self) -> Any: ...


@runtime_checkable
class PalettizerFactory(Protocol):
    """A palettizer class: ``cls(model, config=None)``."""

    def __call__(self, model: nn.Module, config: Any = None) -> Palettizer: ...


@runtime_checkable
class Quantizer(Protocol):
    """A model-level quantizer: ``prepare``, ``calibration_mode()``, ``finalize``."""

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module: ...

    def calibration_mode(self) -> contextlib.AbstractContextManager: ...

    def finalize(self, backend: Any = "coreai", **kwargs: Any) -> nn.Module: ...


@runtime_checkable
class QuantizerFactory(Protocol):
    """A quantizer class: ``cls(model, config=None)``."""

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
