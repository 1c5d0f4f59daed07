"""Fuzz: generated configs, pipeline files and job files reach the loaders; only clean errors come out.

Each loader must either return a value or raise a :class:`~bitsmith.errors.BitsmithError`
(``ConfigError``, ``PluginError``) with a bounded message: never a bare ``KeyError``,
``TypeError``, ``AttributeError``, ``RecursionError`` or a traceback from deep inside.
Bounded: a fixed number of examples, no deadline, derandomized so CI is repeatable.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bitsmith import safe_yaml  # noqa: E402
from bitsmith.config import from_yaml, load  # noqa: E402
from bitsmith.errors import BitsmithError  # noqa: E402
from bitsmith.mixed_precision.job import load_job  # noqa: E402
from bitsmith.pipeline import load_pipeline  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["kmeans", "onnx", "4-bit g16", "per_grouped_channel", "int8",
                                                     "*", "conv.*", "[", "torch.nn:Linear", "../x", "/abs"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10) | st.sampled_from(["type", "n_bits", "weight"]),
                                        inner, max_size=4), max_leaves=16)

VALID = {
    "config": {"kmeans_palettization_config": {
        "global_config": {"op_state_spec": {"weight": {"n_bits": 4, "granularity": {
            "type": "per_grouped_channel", "axis": 0, "group_size": 8}}}},
        "module_name_configs": {"conv1": {"op_state_spec": {"weight": {"n_bits": 2}}}}}},
    "pipeline": {"pipeline": {"model": "torch.nn:Identity", "data": "torch:randn", "output_dir": "out",
                              "steps": [{"type": "palettize", "algorithm": "kmeans", "num_workers": 1,
                                         "config": {"global_config": {"op_state_spec": {"weight": {"n_bits": 4}}}}},
                                        {"type": "quantize", "quantizer": "int8", "calibration_batches": 2},
                                        {"type": "export", "backend": "onnx", "path": "m.onnx",
                                         "options": {"dynamic_batch": True}}]}},
    "pipeline_mp": {"model": "torch.nn:Identity", "data": "torch:randn", "python_path": ["."],
                    "steps": [{"type": "mixed_precision", "target_bpw": 4, "candidates": ["2-bit", "4-bit"],
                               "search": "optimal", "layers": ["conv.*"]},
                              {"type": "export", "backend": "safetensors"}]},
    "job": {"mixed_precision": {"model": "torch.nn:Identity", "data": "torch:randn", "target_bpw": 4,
                                "search": ["greedy"], "candidates": ["2-bit", "4-bit"], "cache_dir": None}},
}
LOADERS = {"config": load, "pipeline": lambda doc: load_pipeline(doc, check=True),
           "pipeline_mp": lambda doc: load_pipeline(doc, check=True), "job": load_job}


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, prefix + (i,))


def _replace(doc, path, value):
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _clean(call, *args):
    try:
        call(*args)
    except BitsmithError as exc:
        assert all(len(line) <= 2000 for line in str(exc).splitlines()), "error message not bounded"
        assert str(exc).strip(), "empty error message"


@st.composite
def mutated(draw, kind):
    doc = VALID[kind]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        doc = _replace(doc, path, draw(VALUES))
    return doc


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_documents_load(kind):
    LOADERS[kind](copy.deepcopy(VALID[kind]))


@pytest.mark.parametrize("kind", sorted(VALID))
@FUZZ
@given(data=st.data())
def test_mutated_documents_give_clean_errors(kind, data):
    doc = data.draw(mutated(kind))
    _clean(LOADERS[kind], doc)


@FUZZ
@given(doc=VALUES)
def test_arbitrary_documents_give_clean_errors(doc):
    for loader in LOADERS.values():
        _clean(loader, doc)


def _dump(doc) -> str:
    try:
        return yaml.safe_dump(doc)
    except (yaml.YAMLError, ValueError):
        return "x: 1\n"


@FUZZ
@given(data=st.data())
def test_damaged_yaml_text_gives_clean_errors(data, tmp_path_factory):
    kind = data.draw(st.sampled_from(sorted(VALID)))
    raw = bytearray(_dump(data.draw(mutated(kind))).encode())
    for _ in range(data.draw(st.integers(0, 4))):  # flip, insert or delete bytes
        at = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or not raw:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b"&a ", b"*a", b"<<: ",
                                                                                      b"\t", b"{", b"- ", b"\n  "]))
        elif op == "flip":
            raw[min(at, len(raw) - 1)] ^= data.draw(st.integers(1, 255))
        else:
            del raw[min(at, len(raw) - 1)]
    path = tmp_path_factory.mktemp("fuzz") / f"{kind}.yaml"
    path.write_bytes(bytes(raw))
    _clean(safe_yaml.load_file, path)
    _clean(LOADERS[kind], path)
    text = bytes(raw).decode("utf-8", errors="replace")
    _clean(from_yaml, text)


@FUZZ
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10))
def test_targets_are_finite_positive_or_refused(value):
    doc = _replace(VALID["pipeline_mp"], ("steps", 0, "target_bpw"), value)
    try:
        config = load_pipeline(doc, check=False)
    except BitsmithError:
        assert not (math.isfinite(value) and value > 0)
    else:
        assert math.isfinite(config.steps[0].target_bpw) and config.steps[0].target_bpw > 0


@pytest.mark.parametrize("text", ['a: "\\U00ffffff"', "d: 2001-13-45", "x: !!python/object:os.system ls",
                                  "? [1]\n: 2", "\x0bull", "a: *missing", "%TAG ! x\n---\na: 1", "- &a 1\n- &a 2\n"])
def test_cases_the_fuzzer_found(text):
    """Inputs that once escaped as ValueError/ReaderError from inside PyYAML."""
    _clean(safe_yaml.load, text)
    _clean(from_yaml, text)
