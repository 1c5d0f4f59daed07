"""A third-party plugin dist living outside core/ and plugins/ is built, installed, discovered and used by name."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bitsmith import compressed, plugins
from bitsmith.testing import check_clusterer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example dist into a private target directory (no network, no build isolation)."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(EXAMPLE, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    return target


@pytest.fixture
def on_path(installed_example):
    sys.path.insert(0, str(installed_example))
    importlib.invalidate_caches()
    previous = plugins.set_default_registry(None)
    yield installed_example
    sys.path.remove(str(installed_example))
    for name in [m for m in sys.modules if m.startswith("bitsmith_uniform")]:
        del sys.modules[name]
    plugins.set_default_registry(previous)


def test_installed_plugin_is_discovered_listed_and_selectable(on_path):
    record = next(r for r in plugins.plugins() if r.name == "uniform")
    assert (record.dist, record.version, record.ok) == ("bitsmith-uniform-example", "0.1.0", True)
    assert record.registered == {"cluster": ["uniform"], "palettizer": ["uniform"]}
    check_clusterer(plugins.get("cluster", "uniform"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    palettizer = plugins.get("palettizer", "uniform")(model)
    prepared = palettizer.prepare()
    for _, module, name, record in compressed.iter_records(prepared):
        assert torch.unique(getattr(module, name)).numel() <= 16
    assert len(palettizer.report().layers) == 2
    assert not compressed.is_compressed(model), "the original model is untouched"


def test_cli_lists_the_installed_plugin(installed_example):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "bitsmith.cli", "plugins", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    payload = json.loads(out)
    entry = next(p for p in payload["plugins"] if p["name"] == "uniform")
    assert entry["dist"] == "bitsmith-uniform-example" and entry["error"] is None
    assert "uniform" in payload["names"]["palettizer"]
