"""The documented schema (docs/format.md): read without bitsmith, checksums, header limits, clean errors."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import bitsmith
from bitsmith import compressed
from bitsmith.atomic import OverwriteError
from bitsmith.config import PalettizationSpec, PerChannelGranularity, PerGroupedChannelGranularity, QuantizationSpec
from bitsmith.palettization import palettize_tensor
from bitsmith_export_safetensors import FormatError, SafetensorsBackend, header_nbytes, plugin

BACKEND = SafetensorsBackend()


def _registry():
    return bitsmith.plugins.Registry(autoload=False, plugins=[plugin])


def _load(path, factory):
    return bitsmith.load(path, factory, backend="safetensors", registry=_registry())


@pytest.fixture
def saved(tmp_path, net, clusterer, quantize):
    """``net`` with a 3-bit grouped conv2, a 2-bit per-tensor conv1 and an int8 fc, saved; returns the path."""
    for name, spec in (("conv1", PalettizationSpec(n_bits=2)),
                       ("conv2", PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(group_size=8)))):
        module = net.get_submodule(name)
        compressed.apply(module, "weight", palettize_tensor(module.weight, spec, clusterer, name=name))
    quantize(net, "fc", QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)))
    return BACKEND.save(net, tmp_path / "m.safetensors")


# ---------------------------------------------------------------------------- a reader that is not bitsmith


def _unpack(packed: np.ndarray, n: int, count: int) -> np.ndarray:
    """The numpy unpacking given in docs/format.md, copied verbatim."""
    if n == 8:
        return packed[:count]
    blocks = packed.reshape(-1, n).astype(np.uint64)
    words = np.bitwise_or.reduce(blocks << (np.arange(n, dtype=np.uint64) * 8), axis=1)
    values = (words[:, None] >> (np.arange(8, dtype=np.uint64) * n)) & (2**n - 1)
    return values.reshape(-1)[:count].astype(np.uint8)


def _dense_from_file(f, header, module):
    """One layer's dense weight from safe_open + the documented schema only (scalar LUTs, any axis-0 groups)."""
    rec = next(r for r in header["records"] if r["module"] == module and r["tensor"] == "weight")
    spec = header["specs"][rec["spec"]]["spec"]
    if rec["kind"] == "quantized":
        q = f.get_tensor(rec["parts"]["int_data"]).astype(np.float32)
        return q * f.get_tensor(rec["parts"]["scale"])  # per-channel: scale has shape (C, 1)
    index = _unpack(f.get_tensor(rec["parts"]["indices"]), spec["n_bits"], int(np.prod(rec["index_shape"])))
    index = index.reshape(rec["index_shape"])
    lut = f.get_tensor(rec["parts"]["lut"])
    group_size = rec["shape"][0] // rec["lut_shape"][0]
    lut_of_channel = np.arange(rec["shape"][0]) // group_size
    return lut[lut_of_channel.reshape(-1, *[1] * (index.ndim - 1)), index, 0]


def test_a_layer_reads_with_safe_open_and_the_documented_schema(saved, net):
    from safetensors import safe_open

    with safe_open(str(saved), "np") as f:
        meta = f.metadata()
        assert meta["format"] == "bitsmith-packed" and meta["schema_version"] == "2"
        assert hashlib.sha256(meta["bitsmith"].encode()).hexdigest() == meta["bitsmith_sha256"]
        header = json.loads(meta["bitsmith"])
        for module in ("conv1", "conv2", "fc"):
            dense = _dense_from_file(f, header, module)
            np.testing.assert_array_equal(dense, net.get_submodule(module).weight.detach().numpy())
        for name, digest in header["sha256"].items():
            assert hashlib.sha256(np.ascontiguousarray(f.get_tensor(name)).tobytes()).hexdigest() == digest, name


def test_one_part_is_read_by_slice_without_loading_the_file(saved):
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f:
        part = f.get_slice("conv2.weight.indices")
        assert part.get_shape() == [(32 * 16 * 9 // 8) * 3]
        head = part[:6]
    assert head.dtype == torch.uint8 and head.numel() == 6


# ---------------------------------------------------------------------------- checksums and damage


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x41
    path.write_bytes(bytes(data))


def test_a_flipped_data_byte_fails_its_tensor_checksum(saved, factory):
    from safetensors import safe_open

    with open(saved, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        table = json.loads(fh.read(n))
    start, _ = table["conv2.weight.indices"]["data_offsets"]
    _flip(saved, 8 + n + start + 3)
    with safe_open(str(saved), "pt") as f:  # the container itself is still valid
        assert "conv2.weight.indices" in f.keys()
    with pytest.raises(FormatError, match=r"m\.safetensors: tensor 'conv2\.weight\.indices' does not match its "
                                          r"SHA-256 checksum"):
        _load(saved, factory)


def test_a_changed_header_fails_the_header_checksum(saved, factory):
    raw = saved.read_bytes()
    at = raw.index(b'\\"axis\\":0')  # inside the bitsmith JSON string (escaped quotes)
    saved.write_bytes(raw[:at] + raw[at:].replace(b'\\"axis\\":0', b'\\"axis\\":1', 1))
    with pytest.raises(FormatError, match=r"header field __metadata__\.bitsmith: does not match its SHA-256"):
        _load(saved, factory)


def test_the_header_length_is_capped_before_anything_is_parsed(tmp_path, factory):
    path = tmp_path / "bomb.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(FormatError, match=r"bomb\.safetensors: header field \(header length\): 1099511627776 bytes "
                                          r"exceeds the 67108864-byte limit"):
        _load(path, factory)


@pytest.mark.parametrize("cut", [0, 5, 200, -40])
def test_a_truncated_file_is_a_clean_error(saved, factory, cut):
    raw = saved.read_bytes()
    saved.write_bytes(raw[:cut])
    with pytest.raises(FormatError, match=r"m\.safetensors: "):
        _load(saved, factory)


def _rewrite_header(path, edit):
    """Apply ``edit`` to the bitsmith header and write it back with a matching digest (a hand edit)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["bitsmith"])
    edit(header)
    meta["bitsmith"] = json.dumps(header)
    meta["bitsmith_sha256"] = hashlib.sha256(meta["bitsmith"].encode()).hexdigest()
    os.unlink(path)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("edit, field", [
    (lambda h: h["records"][0].pop("parts"), r"records\[0\]\.parts: missing"),
    (lambda h: h["records"][0].update(shape="16x3"), r"records\[0\]\.shape: expected list"),
    (lambda h: h["records"][1].update(lut_shape=[4, 4, 1]), r"records\[1\]\.lut_shape: \[4, 4, 1\] is not \[num_luts, 8, 1\]"),
    (lambda h: h["records"][1].update(axis=7), r"records\[1\]\.axis: 7 is outside"),
    (lambda h: h["records"][1].update(spec=9), r"records\[1\]\.spec: 9 is outside"),
    (lambda h: h["records"][1]["parts"].update(indices="nope"), r"records\[1\]\.parts\.indices: names tensor 'nope'"),
    (lambda h: h["records"][2].update(kind="sparse"), r"records\[2\]\.kind: 'sparse'"),
    (lambda h: h["records"][2].update(dtype="float128"), r"records\[2\]\.dtype: 'float128' is not one of"),
    (lambda h: h["specs"][0]["spec"].update(n_bits=5), r"specs\[0\]\.spec: .*n_bits"),
    (lambda h: h.update(records={"a": 1}), r"records: expected list"),
    (lambda h: h["tied"].update({"x.weight": "missing"}), r"tied\.x\.weight: names 'missing'"),
    (lambda h: h["sha256"].pop("conv1.bias"), r"sha256\.conv1\.bias: missing"),
    (lambda h: h["records"][1].update(index_shape=[32, 16, 3, 2]), r"records\[1\]\.index_shape: \[32, 16, 3, 2\]"),
])
def test_every_malformed_field_is_named(saved, factory, edit, field):
    _rewrite_header(saved, edit)
    with pytest.raises(FormatError, match=r"m\.safetensors: header field " + field):
        _load(saved, factory)


def test_schema_1_files_are_refused_with_what_to_do(tmp_path, factory):
    from safetensors.torch import save_file

    old = {"format": "bitsmith-packed", "schema_version": 1, "header": "bitsmith/header (zlib JSON)"}
    path = tmp_path / "old.safetensors"
    save_file({"bitsmith/data": torch.zeros(8, dtype=torch.uint8), "bitsmith/header": torch.zeros(4, dtype=torch.uint8)},
              str(path), metadata={"bitsmith": json.dumps(old)})
    with pytest.raises(FormatError, match=r"old\.safetensors: written in bitsmith's packed schema 1 .* export the "
                                          r"model again"):
        _load(path, factory)


# ---------------------------------------------------------------------------- writing


def test_save_refuses_to_replace_a_file_unless_asked(saved, net, factory, inputs):
    before = saved.read_bytes()
    with pytest.raises(OverwriteError, match="overwrite=True"):
        BACKEND.save(net, saved)
    assert saved.read_bytes() == before
    compressed.detach(net.fc, "weight")
    BACKEND.save(net, saved, overwrite=True)
    assert saved.read_bytes() != before
    assert torch.equal(_load(saved, factory)(inputs), net(inputs))
    assert [p.name for p in saved.parent.iterdir()] == ["m.safetensors"], "no temporary file left behind"


def test_a_failing_write_leaves_the_previous_file(saved, net, monkeypatch):
    import safetensors.torch

    before = saved.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        BACKEND.save(net, saved, overwrite=True)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["m.safetensors"]


def test_header_size_is_reported_separately(saved, net):
    from bitsmith import sizes

    payload = saved.stat().st_size - header_nbytes(saved)
    accounted = sizes.model_size(net).total.bytes
    assert abs(payload - accounted) <= 0.01 * accounted


def test_record_state_entries_are_stored_as_parts_only(tmp_path, net, factory, inputs, clusterer):
    """State-dict entries named ``<tensor>_bitsmith_<part>`` (the core's view of a record) are not stored again."""
    compressed.apply(net.conv2, "weight", palettize_tensor(net.conv2.weight, PalettizationSpec(n_bits=4), clusterer))
    net.conv2.register_buffer("weight_bitsmith_spec", torch.zeros(40, dtype=torch.uint8))
    path = BACKEND.save(net, tmp_path / "m.safetensors")
    from bitsmith_export_safetensors import read_tensors

    assert not any("_bitsmith_" in name for name in read_tensors(path))
    assert torch.equal(_load(path, factory)(inputs), net(inputs))


def test_the_reader_in_docs_format_md_runs_as_written(tmp_path, net, clusterer, monkeypatch):
    """The two code blocks of docs/format.md ('Bit packing', 'Reading one layer') executed verbatim."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "format.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    unpack = next(b for b in blocks if b.startswith("def unpack"))
    reader = next(b for b in blocks if "safe_open(\"model.safetensors\"" in b)
    compressed.apply(net.conv2, "weight", palettize_tensor(net.conv2.weight, PalettizationSpec(n_bits=3), clusterer))
    monkeypatch.chdir(tmp_path)
    BACKEND.save(net, "model.safetensors")
    namespace: dict = {"np": np}
    exec(unpack + reader, namespace)  # noqa: S102 - the documentation's own example
    np.testing.assert_array_equal(namespace["dense"], net.conv2.weight.detach().numpy())
