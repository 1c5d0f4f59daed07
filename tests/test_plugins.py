"""Plugin registry: lazy discovery, failure isolation, duplicates, lookups, strict mode."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import bitsmith
from bitsmith import plugins
from bitsmith.errors import PluginError
from bitsmith.plugins import BitsmithPluginWarning, Registry

GOOD = """
import bitsmith

@bitsmith.hookimpl
def sensitivity_metric(register):
    class Neg:
        higher_is_better = False
        unit = ""
        def score(self, reference, output):
            return float((reference - output).abs().mean())
        def to_distortion(self, score):
            return score
    register("third_party_l1", Neg())
"""

BROKEN = """
raise ImportError("libfoo.so: cannot open shared object file")
"""

RAISES_IN_HOOK = """
import bitsmith

@bitsmith.hookimpl
def cluster(register):
    register("half_done", lambda x, k, *, sample_weight=None, seed=None: (x[:k], None))
    raise RuntimeError("boom while registering")
"""


class Clusterers:
    def __init__(self, *names):
        self.names = names

    @bitsmith.hookimpl
    def cluster(self, register):
        for name in self.names:
            register(name, lambda x, k, **kw: (x[:k], None))


def test_import_bitsmith_reads_no_entry_points():
    code = ("import sys, bitsmith, bitsmith.palettization, bitsmith.quantization\n"
            "from bitsmith import plugins\n"
            "assert plugins._default is None, 'registry created at import'\n"
            "assert not [m for m in sys.modules if m.startswith('bitsmith_')], 'plugin imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lookup_errors_list_available_names_and_install_hint():
    registry = Registry(autoload=False, plugins=[Clusterers("alpha", "beta")])
    with pytest.raises(PluginError) as info:
        registry.get("cluster", "kmeans")
    text = str(info.value)
    assert "no clusterer named 'kmeans'; available: alpha, beta" in text
    assert "pip install bitsmith-kmeans" in text
    assert registry.clusterers.names() == ["alpha", "beta"] and "alpha" in registry.clusterers
    with pytest.raises(PluginError, match="unknown hook 'clusters'"):
        registry.get("clusters", "alpha")


def test_duplicate_name_is_rejected_naming_both_and_first_wins():
    first, second = Clusterers("same"), Clusterers("same", "other")
    registry = Registry(autoload=False)
    registry.register(first, name="first", dist="dist-a")
    with pytest.warns(BitsmithPluginWarning, match="clusterer 'same' is already registered by 'first'"):
        record = registry.register(second, name="second", dist="dist-b")
    assert "'second' (dist dist-b)" in record.error
    assert registry.names("cluster") == ["same"], "the second plugin was rolled back entirely"
    assert registry.provider("cluster", "same").name == "first"


def test_registering_twice_inside_one_plugin_fails():
    registry = Registry(autoload=False)
    with pytest.warns(BitsmithPluginWarning, match="registered twice"):
        registry.register(Clusterers("x", "x"))
    assert registry.names("cluster") == []


def test_strict_mode_raises():
    registry = Registry(autoload=False, strict=True)
    registry.register(Clusterers("same"))
    with pytest.raises(PluginError, match="failed to load"):
        registry.register(Clusterers("same"))


def test_unregister_removes_names():
    plugin = Clusterers("gone")
    registry = Registry(autoload=False, plugins=[plugin])
    registry.unregister(plugin)
    assert registry.names("cluster") == [] and registry.plugins() == []


def test_entry_points_are_discovered_lazily(fake_entry_point):
    fake_entry_point("good", GOOD, dist="bitsmith-third-party", version="1.2.3")
    registry = plugins.default_registry()
    assert not registry._loaded
    metric = registry.get("sensitivity_metric", "third_party_l1")
    assert metric.higher_is_better is False
    record = registry.provider("sensitivity_metric", "third_party_l1")
    assert (record.dist, record.version, record.registered) == (
        "bitsmith-third-party", "1.2.3", {"sensitivity_metric": ["third_party_l1"]})


def test_broken_entry_point_is_isolated_and_reported(fake_entry_point):
    fake_entry_point("good", GOOD, dist="bitsmith-third-party")
    fake_entry_point("fancy", BROKEN, dist="bitsmith-fancy")
    with pytest.warns(BitsmithPluginWarning, match=r"skipping plugin 'fancy' \(dist bitsmith-fancy 0.0.1\): ImportError"):
        assert "third_party_l1" in plugins.names("sensitivity_metric")
    failed = [r for r in plugins.plugins() if r.error and r.dist in ("bitsmith-fancy", "bitsmith-third-party")]
    assert [(r.name, r.dist) for r in failed] == [("fancy", "bitsmith-fancy")]
    assert "libfoo.so" in failed[0].error and "Traceback" in failed[0].traceback
    with pytest.raises(PluginError) as info:
        plugins.get("cluster", "fancy")
    assert "plugin 'fancy' (dist bitsmith-fancy 0.0.1) failed to load: ImportError: libfoo.so" in str(info.value)


def test_plugin_raising_inside_its_hook_is_rolled_back(fake_entry_point):
    fake_entry_point("half", RAISES_IN_HOOK, dist="bitsmith-half")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BitsmithPluginWarning)
        assert "half_done" not in plugins.names("cluster")
        record = [r for r in plugins.plugins() if r.name == "half"][0]
    assert record.error == "RuntimeError: boom while registering" and record.registered == {}


def test_strict_env_var_turns_failures_into_errors(fake_entry_point, monkeypatch):
    fake_entry_point("fancy", BROKEN, dist="bitsmith-fancy")
    monkeypatch.setenv("BITSMITH_STRICT_PLUGINS", "1")
    plugins.set_default_registry(None)
    with pytest.raises(PluginError, match="bitsmith-fancy"):
        plugins.names("cluster")


def test_private_registry_for_embedders_ignores_entry_points(fake_entry_point):
    fake_entry_point("good", GOOD, dist="bitsmith-third-party")
    private = Registry(autoload=False, plugins=[Clusterers("mine")])
    assert private.names("sensitivity_metric") == [] and private.names("cluster") == ["mine"]


def test_register_plugin_fixture_and_default_helpers(bitsmith_registry, register_plugin):
    record = register_plugin(Clusterers("temp"), name="temp-plugin")
    assert record.ok and plugins.names("cluster") == ["temp"]
    assert plugins.get("cluster", "temp") is bitsmith_registry.get("cluster", "temp")


def test_plugin_classes_give_install_hint_when_absent(bitsmith_registry):
    with pytest.raises(ImportError, match="pip install bitsmith-kmeans"):
        from bitsmith.palettization import KMeansPalettizer  # noqa: F401
    with pytest.raises(ImportError, match="pip install bitsmith-int8-quant"):
        from bitsmith.quantization import Quantizer  # noqa: F401



def test_torch_single_thread_fixture_runs_torch_on_one_thread(torch_single_thread):
    import torch

    assert torch.get_num_threads() == 1


NOT_A_METRIC = """
import bitsmith

def l1(reference, output):
    return float((reference - output).abs().mean())

@bitsmith.hookimpl
def sensitivity_metric(register):
    register("l1", l1)
"""


def test_metric_registered_as_a_function_is_refused_naming_plugin_and_name(fake_entry_point):
    fake_entry_point("l1plugin", NOT_A_METRIC, dist="bitsmith-l1")
    with pytest.warns(BitsmithPluginWarning, match="l1plugin"):
        assert "l1" not in plugins.names("sensitivity_metric")
    record = next(r for r in plugins.plugins() if r.name == "l1plugin")
    assert record.registered == {}
    assert record.error == (
        "PluginError: sensitivity metric 'l1' of plugin 'l1plugin' (dist bitsmith-l1 0.0.1) does not satisfy "
        "bitsmith.protocols.SensitivityMetric: a function is not a SensitivityMetric: register an instance with "
        "higher_is_better, score, to_distortion, unit")
    with pytest.raises(PluginError, match="plugin 'l1plugin' \\(dist bitsmith-l1 0.0.1\\) failed to load"):
        plugins.get("sensitivity_metric", "l1")


class _Backends:
    def __init__(self, backend):
        self.backend = backend

    @bitsmith.hookimpl
    def export_backend(self, register):
        register("odd", self.backend)


def test_non_conforming_backend_is_refused_with_every_problem():
    class HalfFile:
        description = "writes but has no suffix"

        def finalize(self, model):
            return model

        def save(self, model, path):  # no example_inputs keyword
            return path

    registry = Registry(autoload=False)
    with pytest.warns(BitsmithPluginWarning):
        record = registry.register(_Backends(HalfFile()), name="half", dist="bitsmith-half")
    assert "export backend 'odd' of plugin 'half'" in record.error
    assert "a file backend needs both suffix and save" in record.error
    assert "example_inputs" in record.error
    assert registry.names("export_backend") == []
