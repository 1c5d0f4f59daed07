"""Damaged and hand-edited files: the loader raises only FormatError, or loads the very same model."""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import bitsmith  # noqa: E402
from bitsmith import compressed  # noqa: E402
from bitsmith.config import PalettizationSpec, PerChannelGranularity, QuantizationSpec  # noqa: E402
from bitsmith.palettization import palettize_tensor  # noqa: E402
from bitsmith_export_safetensors import FormatError, SafetensorsBackend, plugin  # noqa: E402

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
INPUTS = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


@functools.lru_cache(maxsize=1)
def _original(make_net, lloyd, quantize) -> tuple[bytes, torch.Tensor]:
    """The bytes of a saved joint model (palettized, quantized LUT, int8, activations) and its output."""
    net = make_net()
    spec = PalettizationSpec(n_bits=3, lut_qspec=QuantizationSpec(dtype="int8"))
    compressed.apply(net.conv2, "weight", palettize_tensor(net.conv2.weight, spec, lloyd))
    quantize(net, "fc", QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)))
    compressed.attach(net.fc, "input.0", compressed.ActivationQuant(scale=torch.tensor(0.05), zero_point=None,
                                                                    spec=QuantizationSpec(dtype="int8")))
    bitsmith.loading.enable_activation_quant(net)
    with tempfile.TemporaryDirectory() as tmp:
        path = SafetensorsBackend().save(net, Path(tmp) / "m.safetensors")
        data = path.read_bytes()
    with torch.no_grad():
        return data, net(INPUTS)


def _load_bytes(data: bytes, make_net) -> torch.Tensor:
    registry = bitsmith.plugins.Registry(autoload=False, plugins=[plugin])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        path.write_bytes(data)
        model = bitsmith.load(path, make_net, backend="safetensors", registry=registry)
    with torch.no_grad():
        return model(INPUTS)


@SETTINGS
@given(data=st.data())
def test_flipped_bytes_and_truncation_give_clean_errors(data, factory, clusterer, quantize):
    raw, expected = _original(factory, clusterer, quantize)
    damaged = bytearray(raw)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="offset")
            damaged[at] ^= data.draw(st.integers(1, 255), label="xor")
    try:
        out = _load_bytes(bytes(damaged), factory)
    except FormatError as exc:
        assert "m.safetensors" in str(exc)
        return
    assert torch.equal(out, expected), "a damaged file that loads must give the same model"


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4),
                     max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _with_header(raw: bytes, header: dict) -> bytes:
    """``raw`` with its bitsmith header replaced (digest recomputed, as a careful hand edit would)."""
    from safetensors.torch import load, save

    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    meta["bitsmith"] = json.dumps(header)
    meta["bitsmith_sha256"] = hashlib.sha256(meta["bitsmith"].encode()).hexdigest()
    return save(load(raw), metadata=meta)


@SETTINGS
@given(data=st.data())
def test_hand_edited_headers_give_clean_errors(data, factory, clusterer, quantize):
    raw, _ = _original(factory, clusterer, quantize)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(json.loads(raw[8:8 + n])["__metadata__"]["bitsmith"])
    paths = [p for p in _paths(header) if p]
    path = data.draw(st.sampled_from(paths), label="field")
    target = header
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans(), label="delete") and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = data.draw(_json, label="value")
    try:
        _load_bytes(_with_header(raw, header), factory)
    except FormatError as exc:
        message = str(exc)
        assert "m.safetensors" in message and len(message) < 2000, message
