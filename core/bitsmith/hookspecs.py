"""Hook specifications: the contract between the bitsmith core and its plugins.

Every hook is a *registration* hook taking one argument, ``register``. The core calls
each hook once per plugin, the first time a registry of that kind is used (plugins are
discovered lazily through the ``bitsmith`` entry-point group). A plugin implements a
hook with :data:`bitsmith.hookimpl` and calls ``register(name, implementation)`` once
per implementation; ``name`` is how configs and function arguments select it
(``metric="psnr"``, ``search="greedy"``, ``backend="coreai"``). The implementation
must satisfy the protocol named in each hook (see :mod:`bitsmith.protocols`).

Hook arguments only ever grow; none is renamed or removed within a major version.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "bitsmith"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cluster(register):
    """Register clustering kernels used to build lookup tables.

    Called: the first time a clusterer is looked up (palettization, sensitivity).

    :param register: ``register(name, clusterer)``; ``clusterer`` satisfies
        :class:`bitsmith.protocols.Clusterer`: ``clusterer(x, k, *, sample_weight=None,
        seed=None) -> (centroids, labels)`` for rows of ``x`` (n, d).

    Changed in 0.1: introduced.
    """


@hookspec
def sensitivity_metric(register):
    """Register metrics that score a compressed model's outputs against the reference outputs.

    Called: the first time a metric is looked up (mixed-precision sensitivity, reports).

    :param register: ``register(name, metric)``; ``metric`` is an instance (a plain
        function is refused) satisfying :class:`bitsmith.protocols.SensitivityMetric`
        (``higher_is_better``, ``unit``, ``score``, ``to_distortion``); optionally
        :class:`~bitsmith.protocols.InvertibleMetric` (``from_distortion``).

    Changed in 0.1: introduced; implementations are checked at registration.
    """


@hookspec
def recipe_search(register):
    """Register strategies that turn a sensitivity table and a size budget into a recipe.

    Called: the first time a recipe search is looked up (``generate_recipe``).

    :param register: ``register(name, search)``; ``search`` satisfies
        :class:`bitsmith.protocols.RecipeSearch`: ``search(problem) -> list[int]``,
        one chosen option index per layer of a :class:`bitsmith.protocols.RecipeProblem`.

    Changed in 0.1: introduced.
    """


@hookspec
def export_backend(register):
    """Register export backends that turn a compressed model into a deployable one.

    Called: the first time a backend is looked up (``finalize(backend=...)``, ``bitsmith.export``).

    :param register: ``register(name, backend)``; ``backend`` is an instance satisfying
        :class:`bitsmith.protocols.ExportBackendImpl` (``description``, ``finalize(model)``);
        optionally :class:`~bitsmith.protocols.FileExportBackend` (``suffix``,
        ``save(model, path, *, example_inputs=None)``) and
        :class:`~bitsmith.protocols.ReadableExportBackend` (``load(path, model_factory)``).

    Changed in 0.1: introduced; implementations are checked at registration.
    """


@hookspec
def palettizer(register):
    """Register model-level palettizer classes (``KMeansPalettizer``, ``SKMPalettizer``, ...).

    Called: the first time a palettizer is looked up, e.g. by
    ``bitsmith.palettization.KMeansPalettizer`` or ``compute_sensitivity(palettizer=...)``.

    :param register: ``register(name, cls)``; ``cls(model, config)`` satisfies
        :class:`bitsmith.protocols.PalettizerFactory`; optionally ``config_class``
        (:class:`~bitsmith.protocols.Configurable`), a ``registry=`` keyword, and instances
        that are :class:`~bitsmith.protocols.DataDrivenPalettizer`. ``name`` is what
        configs put in ``algorithm:``.

    Changed in 0.1: introduced; implementations are checked at registration.
    """


@hookspec
def quantizer(register):
    """Register model-level quantizer classes (``Quantizer``).

    Called: the first time a quantizer is looked up, e.g. by ``bitsmith.quantization.Quantizer``.

    :param register: ``register(name, cls)``; ``cls(model, config)`` satisfies
        :class:`bitsmith.protocols.QuantizerFactory`; optionally ``config_class``
        (:class:`~bitsmith.protocols.Configurable`) and a ``registry=`` keyword.

    Changed in 0.1: introduced; implementations are checked at registration.
    """


@hookspec
def observer(register):
    """Register range observers that calibrate quantization parameters.

    Called: the first time an observer is looked up (``QuantizationSpec.observer``).

    :param register: ``register(name, factory)``; ``factory`` satisfies
        :class:`bitsmith.protocols.ObserverFactory`: ``factory()`` returns a
        :class:`bitsmith.protocols.Observer`.

    Changed in 0.1: introduced; implementations are checked at registration.
    """


HOOK_NAMES = ("cluster", "sensitivity_metric", "recipe_search", "export_backend", "palettizer", "quantizer", "observer")
"""Every registration hook, in documentation order."""
