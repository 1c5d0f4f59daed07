"""Pytest plugin and contract checks for bitsmith plugin authors.

Installed with bitsmith (entry point ``pytest11``), so in any test session:

- ``bitsmith_registry``: a fresh, empty :class:`~bitsmith.plugins.Registry` made the
  default for the test (entry points are not loaded), restored afterwards.
- ``register_plugin(obj)``: register a plugin object in the current default
  registry, unregistered at teardown; returns its :class:`PluginRecord`.
- ``fake_entry_point(name, source)``: write a throw-away dist with a ``bitsmith``
  entry point (module ``source`` as text, may raise on import) onto ``sys.path``
  and reset the default registry so the next lookup discovers it.
- ``torch_single_thread``: torch runs on one thread for the test (restored
  afterwards); tiny models run fastest so, without OpenMP oversubscription on busy
  CI machines. Use it from an autouse fixture or ``pytest.mark.usefixtures``.

Contract checks, one per hook kind, raise ``AssertionError`` with a reason:
:func:`check_clusterer`, :func:`check_metric`, :func:`check_recipe_search`,
:func:`check_export_backend`, :func:`check_palettizer`, :func:`check_quantizer`,
:func:`check_observer`. Each first checks the structure the registry checks at
registration (:func:`bitsmith.protocols.conformance`), then runs the implementation
on small inputs.

Shared helpers for plugin test suites (import them; they are not fixtures):
:mod:`bitsmith.testing.kernels` (``quantile_clusterer``, a deterministic ``"kmeans"``
stand-in), :mod:`~bitsmith.testing.palettizer_models` (exact weighted 1-D k-means,
a digits CNN), :mod:`~bitsmith.testing.backend_models` and
:mod:`~bitsmith.testing.file_backend_models` (models carrying every kind of record).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


@pytest.fixture
def torch_single_thread() -> Iterator[None]:
    """torch on one thread for the test; the previous thread count is restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def bitsmith_registry() -> Iterator[Any]:
    """A fresh registry without entry points, installed as the default for one test."""
    from bitsmith import plugins

    registry = plugins.Registry(autoload=False)
    previous = plugins.set_default_registry(registry)
    try:
        yield registry
    finally:
        plugins.set_default_registry(previous)


@pytest.fixture
def register_plugin() -> Iterator[Callable[[Any], Any]]:
    """``register_plugin(obj)`` registers into the current default registry until teardown."""
    from bitsmith import plugins

    done: list[tuple[Any, Any]] = []

    def _register(obj: Any, name: str | None = None) -> Any:
        registry = plugins.default_registry()
        record = registry.register(obj, name=name)
        done.append((registry, obj))
        return record

    yield _register
    for registry, obj in reversed(done):
        registry.unregister(obj)


@pytest.fixture
def fake_entry_point(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``fake_entry_point(name, source, dist="fake-plugin")`` makes an installed-looking dist on ``sys.path``."""
    from bitsmith import plugins

    added: list[str] = []
    modules: list[str] = []
    previous = plugins.set_default_registry(None)

    def _make(name: str, source: str, dist: str = "fake-plugin", version: str = "0.0.1") -> str:
        root = tmp_path / f"site-{dist}-{name}"
        module = f"_fake_bitsmith_{dist.replace('-', '_')}_{name}"
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[bitsmith]\n{name} = {module}\n")
        sys.path.insert(0, str(root))
        added.append(str(root))
        modules.append(module)
        importlib.invalidate_caches()
        plugins.set_default_registry(None)
        return module

    yield _make
    for root in added:
        if root in sys.path:
            sys.path.remove(root)
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    plugins.set_default_registry(previous)


# ---------------------------------------------------------------------- contract checks


def check_clusterer(clusterer: Any) -> None:
    """Assert ``clusterer`` honours :class:`bitsmith.protocols.Clusterer` on small weighted inputs.

    Rows carry positive ``sample_weight`` (a clusterer that needs weights, such as
    ``sensitive_kmeans``, may refuse ``None``; every clusterer must accept weights).
    """
    import pickle

    import torch

    _conforms("cluster", clusterer)
    gen = torch.Generator().manual_seed(0)
    for d in (1, 2):
        x = torch.randn(200, d, generator=gen)
        weights = torch.rand(200, generator=gen) + 0.5
        centroids, labels = clusterer(x, 4, sample_weight=weights, seed=0)
        centroids, labels = torch.as_tensor(centroids), torch.as_tensor(labels)
        assert centroids.shape[1:] == (d,) and 1 <= centroids.shape[0] <= 4, f"bad centroid shape {tuple(centroids.shape)}"
        assert labels.shape == (200,), f"bad labels shape {tuple(labels.shape)}"
        assert int(labels.min()) >= 0 and int(labels.max()) < centroids.shape[0], "label out of range"
        used = torch.unique(labels).numel()
        assert used == centroids.shape[0], f"{centroids.shape[0] - used} empty cluster(s)"
        again = clusterer(x, 4, sample_weight=weights, seed=0)
        assert torch.equal(torch.as_tensor(again[1]), labels), "not deterministic for a fixed seed"
    few = torch.tensor([[1.0], [1.0], [2.0]])
    centroids, labels = clusterer(few, 8, sample_weight=torch.ones(3), seed=0)
    assert torch.as_tensor(centroids).shape[0] <= 2, "more centroids than distinct rows"
    pickle.dumps(clusterer)


def check_metric(metric: Any) -> None:
    """Assert ``metric`` honours :class:`bitsmith.protocols.SensitivityMetric` (and ``InvertibleMetric`` if it claims to)."""
    import math

    import torch

    from bitsmith.protocols import InvertibleMetric

    _conforms("sensitivity_metric", metric)
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(8, 10, generator=gen)
    close, far = ref + 0.01 * torch.randn(8, 10, generator=gen), ref + 0.5 * torch.randn(8, 10, generator=gen)
    s_close, s_far = metric.score(ref, close), metric.score(ref, far)
    better = s_close > s_far if metric.higher_is_better else s_close < s_far
    assert better, f"score does not rank a closer output better ({s_close} vs {s_far})"
    d_close, d_far = metric.to_distortion(s_close), metric.to_distortion(s_far)
    assert 0 <= d_close < d_far, f"to_distortion must be non-negative and grow with error ({d_close}, {d_far})"
    if isinstance(metric, InvertibleMetric):
        for score in (s_close, s_far):
            back = metric.from_distortion(metric.to_distortion(score))
            assert math.isclose(back, score, rel_tol=1e-6, abs_tol=1e-9), \
                f"from_distortion does not invert to_distortion ({score} -> {back})"


def check_recipe_search(search: Any) -> None:
    """Assert ``search`` honours :class:`bitsmith.protocols.RecipeSearch` (budget respected)."""
    from bitsmith.protocols import RecipeProblem

    _conforms("recipe_search", search)
    problem = RecipeProblem(layers=["a", "b", "c"], costs=[[2, 4, 6], [2, 4, 6], [4, 8, 12]],
                            distortions=[[5.0, 1.0, 0.1], [3.0, 2.0, 1.5], [9.0, 1.0, 0.5]], budget=20)
    choice = list(search(problem))
    assert len(choice) == 3, "one option per layer"
    assert problem.cost(choice) <= problem.budget, f"over budget: {problem.cost(choice)} > {problem.budget}"
    assert problem.distortion(choice) <= problem.distortion([0, 0, 0]), "worse than the cheapest choice"


def check_export_backend(backend: Any, tmp_dir: Any = None) -> None:
    """Assert ``backend`` honours :class:`bitsmith.protocols.ExportBackendImpl` on a model with one record.

    A :class:`~bitsmith.protocols.FileExportBackend` also saves into ``tmp_dir`` (a
    new temporary directory by default); a
    :class:`~bitsmith.protocols.ReadableExportBackend` loads that file back with the
    same outputs.
    """
    import copy
    import tempfile

    import torch

    from bitsmith.protocols import FileExportBackend, ReadableExportBackend

    _conforms("export_backend", backend)
    model, x = _palettized_linear()
    expected = model(x)
    out = backend.finalize(copy.deepcopy(model))(x)
    assert torch.allclose(out, expected, atol=1e-6), "finalized model output differs from the prepared model"
    if not isinstance(backend, FileExportBackend):
        return
    with tempfile.TemporaryDirectory() as own:
        path = Path(tmp_dir or own) / f"model{backend.suffix}"
        written = Path(backend.save(backend.finalize(copy.deepcopy(model)), path, example_inputs=(x,)))
        size = sum(f.stat().st_size for f in written.rglob("*") if f.is_file()) if written.is_dir() else (
            written.stat().st_size if written.exists() else 0)
        assert size > 0, f"save() wrote nothing at {written}"
        if isinstance(backend, ReadableExportBackend):
            loaded = backend.load(written, lambda: torch.nn.Sequential(torch.nn.Linear(8, 4)))
            assert torch.allclose(loaded(x), expected, atol=1e-6), "the loaded model's output differs"


def check_palettizer(cls: Any, example_inputs: Any = None, *, registry: Any = None) -> None:
    """Assert a palettizer class honours :class:`bitsmith.protocols.PalettizerFactory` on a small MLP.

    ``prepare(example_inputs)`` must return a new model whose 4-bit per-tensor
    weights have at most 16 distinct values in eval mode (post-training palettizers
    attach :class:`~bitsmith.compressed.PalettizedTensor` records; training-time ones
    may attach them at ``finalize``) and leave the original untouched. A
    :class:`~bitsmith.protocols.DataDrivenPalettizer` must start with
    ``sensitivity is None`` and set it in ``compute_sensitivity(example_inputs)``.
    """
    import torch
    from torch import nn

    from bitsmith import compressed
    from bitsmith.config import KMeansPalettizerConfig
    from bitsmith.protocols import DataDrivenPalettizer, Palettizer, config_class_of, instantiate

    _conforms("palettizer", cls)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(4, 8) for _ in range(2)] if example_inputs is None else example_inputs
    before = [p.detach().clone() for p in model.parameters()]
    palettizer = instantiate(cls, model, config_class_of(cls, KMeansPalettizerConfig)(), registry)
    assert isinstance(palettizer, Palettizer), "instances need prepare, finalize and report"
    if isinstance(palettizer, DataDrivenPalettizer):
        assert palettizer.sensitivity is None, "sensitivity must be None before compute_sensitivity()"
        palettizer.compute_sensitivity(data)
        assert palettizer.sensitivity is not None, "compute_sensitivity() must set sensitivity"
    prepared = palettizer.prepare(data)
    assert prepared is not model, "prepare() must return a copy unless asked to work in place"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the original model was changed"
    records = [r for *_, r in compressed.iter_records(prepared) if not isinstance(r, compressed.PalettizedTensor)]
    assert not records, f"prepare() attached records that are not PalettizedTensor: {records}"
    prepared.eval()
    with torch.no_grad():
        for layer in (prepared[0], prepared[2]):
            assert torch.unique(layer.weight).numel() <= 16, "a 4-bit layer has more than 16 distinct values"


def check_quantizer(cls: Any, example_inputs: Any = None, *, registry: Any = None) -> None:
    """Assert a quantizer class honours :class:`bitsmith.protocols.QuantizerFactory` on a small MLP.

    ``prepare(example_inputs)`` must return a model that carries quantized-weight
    records and still runs, in and out of ``calibration_mode()``, to finite outputs
    close to the original's.
    """
    import torch
    from torch import nn

    from bitsmith import compressed
    from bitsmith.config import QuantizerConfig
    from bitsmith.protocols import Quantizer, config_class_of, instantiate

    _conforms("quantizer", cls)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(16, 8) if example_inputs is None else example_inputs
    expected = model(x)
    quantizer = instantiate(cls, model, config_class_of(cls, QuantizerConfig)(), registry)
    assert isinstance(quantizer, Quantizer), "instances need prepare, calibration_mode and finalize"
    prepared = quantizer.prepare(x)
    with quantizer.calibration_mode():
        prepared(x)
    out = prepared(x)
    assert torch.isfinite(out).all(), "the prepared model gives non-finite outputs"
    assert any(isinstance(r, compressed.QuantizedTensor) for *_, r in compressed.iter_records(prepared)), \
        "prepare() attached no QuantizedTensor record"
    error = float((out - expected).detach().norm() / expected.detach().norm())
    assert error < 0.1, f"the quantized model is far from the original (relative error {error:.3f})"


def check_observer(factory: Any) -> None:
    """Assert an observer factory honours :class:`bitsmith.protocols.ObserverFactory` / ``Observer``.

    A new observer raises ``RuntimeError`` from ``bounds()``; after observing it
    returns finite ``(min, max)`` with ``min < max``, inside the observed range
    (widened to include zero), per tensor and per channel.
    """
    import torch

    from bitsmith.protocols import Observer

    _conforms("observer", factory)
    observer = factory()
    assert isinstance(observer, Observer), "factory() must return an object with observe() and bounds()"
    try:
        observer.bounds()
    except RuntimeError:
        pass
    else:
        raise AssertionError("bounds() before any observe() must raise RuntimeError")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen)
    for dims, shape in (((0, 1), ()), ((0,), (3,))):
        observer = factory()
        observer.observe(x[:32], dims)
        observer.observe(x[32:], dims)
        lo, hi = (torch.as_tensor(t).float() for t in observer.bounds())
        assert lo.shape == shape and hi.shape == shape, \
            f"bounds over {dims} have shape {tuple(lo.shape)}, expected {shape}"
        seen_lo = x.amin(dim=dims).clamp(max=0) - 1e-6
        seen_hi = x.amax(dim=dims).clamp(min=0) + 1e-6
        assert bool(torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo < hi).all()), \
            f"bounds must be finite with min < max, got {lo}, {hi}"
        assert bool((lo >= seen_lo).all() and (hi <= seen_hi).all()), \
            f"bounds over {dims} lie outside the observed range (widened to zero)"


CHECKS: dict[str, Callable[..., None]] = {
    "cluster": check_clusterer, "sensitivity_metric": check_metric, "recipe_search": check_recipe_search,
    "export_backend": check_export_backend, "palettizer": check_palettizer, "quantizer": check_quantizer,
    "observer": check_observer,
}
"""The contract check of each hook kind."""


def _conforms(kind: str, impl: Any) -> None:
    from bitsmith.protocols import PROTOCOLS, conformance

    problems = conformance(kind, impl)
    assert not problems, f"does not satisfy bitsmith.protocols.{PROTOCOLS[kind].__name__}: " + "; ".join(problems)


def _palettized_linear() -> tuple[Any, Any]:
    """A one-Linear model carrying a 2-bit palettized record (a fixed quantile clusterer, no plugin needed)."""
    import torch
    from torch import nn

    from bitsmith import compressed
    from bitsmith.config import PalettizationSpec
    from bitsmith.palettization import palettize_tensor

    def nearest(x: torch.Tensor, k: int, *, sample_weight=None, seed=None):
        centroids = torch.quantile(x[:, 0], torch.linspace(0, 1, k)).unique()[:, None]
        return centroids, torch.cdist(x, centroids).argmin(1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    record = palettize_tensor(model[0].weight, PalettizationSpec(n_bits=2), nearest)
    compressed.apply(model[0], "weight", record)
    return model, torch.randn(3, 8)
