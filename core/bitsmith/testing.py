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

Contract checks raise ``AssertionError`` with a reason: :func:`check_clusterer`,
:func:`check_metric`, :func:`check_recipe_search`, :func:`check_export_backend`.
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
    """Assert ``clusterer`` honours :class:`bitsmith.protocols.Clusterer` on small inputs."""
    import pickle

    import torch

    gen = torch.Generator().manual_seed(0)
    for d in (1, 2):
        x = torch.randn(200, d, generator=gen)
        centroids, labels = clusterer(x, 4, sample_weight=None, seed=0)
        centroids, labels = torch.as_tensor(centroids), torch.as_tensor(labels)
        assert centroids.shape[1:] == (d,) and 1 <= centroids.shape[0] <= 4, f"bad centroid shape {tuple(centroids.shape)}"
        assert labels.shape == (200,), f"bad labels shape {tuple(labels.shape)}"
        assert int(labels.min()) >= 0 and int(labels.max()) < centroids.shape[0], "label out of range"
        used = torch.unique(labels).numel()
        assert used == centroids.shape[0], f"{centroids.shape[0] - used} empty cluster(s)"
        again = clusterer(x, 4, sample_weight=None, seed=0)
        assert torch.equal(torch.as_tensor(again[1]), labels), "not deterministic for a fixed seed"
    few = torch.tensor([[1.0], [1.0], [2.0]])
    centroids, labels = clusterer(few, 8, sample_weight=None, seed=0)
    assert torch.as_tensor(centroids).shape[0] <= 2, "more centroids than distinct rows"
    pickle.dumps(clusterer)


def check_metric(metric: Any) -> None:
    """Assert ``metric`` honours :class:`bitsmith.protocols.SensitivityMetric`."""
    import torch

    assert isinstance(metric.higher_is_better, bool), "higher_is_better must be a bool"
    assert isinstance(metric.unit, str), "unit must be a string"
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(8, 10, generator=gen)
    close, far = ref + 0.01 * torch.randn(8, 10, generator=gen), ref + 0.5 * torch.randn(8, 10, generator=gen)
    s_close, s_far = metric.score(ref, close), metric.score(ref, far)
    better = s_close > s_far if metric.higher_is_better else s_close < s_far
    assert better, f"score does not rank a closer output better ({s_close} vs {s_far})"
    d_close, d_far = metric.to_distortion(s_close), metric.to_distortion(s_far)
    assert 0 <= d_close < d_far, f"to_distortion must be non-negative and grow with error ({d_close}, {d_far})"


def check_recipe_search(search: Any) -> None:
    """Assert ``search`` honours :class:`bitsmith.protocols.RecipeSearch` (budget respected)."""
    from bitsmith.protocols import RecipeProblem

    problem = RecipeProblem(layers=["a", "b", "c"], costs=[[2, 4, 6], [2, 4, 6], [4, 8, 12]],
                            distortions=[[5.0, 1.0, 0.1], [3.0, 2.0, 1.5], [9.0, 1.0, 0.5]], budget=20)
    choice = list(search(problem))
    assert len(choice) == 3, "one option per layer"
    assert problem.cost(choice) <= problem.budget, f"over budget: {problem.cost(choice)} > {problem.budget}"
    assert problem.distortion(choice) <= problem.distortion([0, 0, 0]), "worse than the cheapest choice"


def check_export_backend(backend: Any) -> None:
    """Assert ``backend`` honours :class:`bitsmith.protocols.ExportBackendImpl` on a model with one record."""
    import torch
    from torch import nn

    from bitsmith import compressed
    from bitsmith.config import PalettizationSpec
    from bitsmith.palettization import palettize_tensor

    assert isinstance(getattr(backend, "description", None), str), "backend needs a description string"

    def nearest(x: torch.Tensor, k: int, *, sample_weight=None, seed=None):
        centroids = torch.quantile(x[:, 0], torch.linspace(0, 1, k)).unique()[:, None]
        return centroids, torch.cdist(x, centroids).argmin(1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    record = palettize_tensor(model[0].weight, PalettizationSpec(n_bits=2), nearest)
    compressed.apply(model[0], "weight", record)
    x = torch.randn(3, 8)
    expected = model(x)
    out = backend.finalize(model)(x)
    assert torch.allclose(out, expected, atol=1e-6), "finalized model output differs from the prepared model"
