"""The packed file format: a safetensors container with one data blob and a compressed JSON header.

The safetensors file holds two uint8 tensors: ``bitsmith/data`` (every logical tensor's
bytes back to back, in the order the header lists them) and ``bitsmith/header`` (the
zlib-compressed JSON header); its ``__metadata__`` says ``format`` and ``schema_version``
under the ``bitsmith`` key. Keeping the per-tensor table inside the compressed header
keeps the overhead small (2.4 KB for MobileNetV2 palettized: 53 records and 261 other tensors).

Logical tensors (``/`` never occurs in a module name, so names cannot clash with
state-dict keys):

- every state-dict entry that no record covers, under its own key (tied tensors once,
  the other names listed in ``tied``);
- a palettized tensor ``q`` (``module.tensor``): ``q/indices`` (uint8, the record's
  indices in row-major order bit-packed at ``n_bits`` by :mod:`bitsmith.packing`),
  ``q/lut`` (float LUTs, shape ``(num_luts, 2**n_bits, cluster_dim)``) or, when the LUT
  is quantized, ``q/lut_int`` + ``q/lut_scale`` (+ ``q/lut_zero_point``),
  ``q/per_channel_scale`` when present, ``q/outlier_positions`` (int32, flat positions) and
  ``q/outlier_values`` for sparse outliers kept exact;
- a quantized tensor ``q``: ``q/int_data`` (int8/uint8/float8 as is, int4/uint4
  bit-packed at 4 bits with an offset of ``-qmin``), ``q/scale`` (+ ``q/zero_point``, packed
  like the integers);
- an activation quantization of ``module`` at ``input.i``/``output.i``:
  ``module.input.i/scale`` (+ ``/zero_point``).

The header carries ``format``, ``schema_version``, ``tensors`` (``[name, dtype, shape]``
in data order), the specs (each once, written with :func:`bitsmith.config.to_dict`), one
entry per record (kind, owning module, tensor name, aliases for tied tensors, spec index,
shape, dtype, axis), and ``identity_modules``: modules that compression replaced by
``nn.Identity`` (batch norms a quantizer folded into the preceding layer), replayed on the
factory's model at load.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import nn

import bitsmith
from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, LutQuantization, PalettizedTensor, QuantizedTensor, SparseOutliers
from bitsmith.config import PalettizationSpec, QuantizationSpec, from_dict, to_dict
from bitsmith.errors import CompressionError
from bitsmith.packing import pack_bits, unpack_bits

FORMAT = "bitsmith-packed"
"""Value of the header's ``format`` field."""

SCHEMA_VERSION = 1
"""Version of the header layout; readers refuse files with a newer major version."""

METADATA_KEY = "bitsmith"
"""safetensors ``__metadata__`` key holding the format name and schema version."""

DATA_KEY = "bitsmith/data"
"""safetensors tensor (uint8) holding every logical tensor's bytes, back to back."""

HEADER_KEY = "bitsmith/header"
"""safetensors tensor (uint8) holding the zlib-compressed JSON header."""

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise CompressionError(f"unsupported dtype {name!r} in file; known: {', '.join(_DTYPES)}") from None


def _qualified(module_name: str, tensor_name: str) -> str:
    return f"{module_name}.{tensor_name}" if module_name else tensor_name


class _Specs:
    """Deduplicated table of specs written to the header."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}

    def add(self, spec: Union[PalettizationSpec, QuantizationSpec]) -> int:
        kind = "palettization" if isinstance(spec, PalettizationSpec) else "quantization"
        item = {"type": kind, "spec": to_dict(spec)}
        key = json.dumps(item, sort_keys=True)
        if key not in self._index:
            self._index[key] = len(self.items)
            self.items.append(item)
        return self._index[key]


def _lut_from_quant(q: LutQuantization) -> torch.Tensor:
    """The float LUT a :class:`LutQuantization` decodes to (as ``palettize_tensor`` computes it)."""
    shape = q.int_lut.shape
    flat = q.int_lut.reshape(shape[0], -1)
    if q.spec.is_float8:
        return (flat.float() * q.scale[:, None]).reshape(shape)
    zp = torch.zeros_like(q.scale) if q.zero_point is None else q.zero_point.float()
    return ((flat.float() - zp[:, None]) * q.scale[:, None]).reshape(shape)


def _narrow_lossless(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` at ``dtype`` when that round-trips exactly, else ``t`` unchanged."""
    if dtype == t.dtype or not dtype.is_floating_point:
        return t
    narrow = t.to(dtype)
    return narrow if torch.equal(narrow.to(t.dtype), t) else t


# --------------------------------------------------------------------------- encode


def encode(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON header that represent ``model`` (records + remaining state)."""
    specs = _Specs()
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    by_record: dict[int, dict[str, Any]] = {}
    covered: set[str] = set()
    for module_name, _module, tensor_name, record in compressed.iter_records(model):
        q = _qualified(module_name, tensor_name)
        if isinstance(record, ActivationQuant):
            entries.append({"kind": "activation", "module": module_name, "tensor": tensor_name,
                            "spec": specs.add(record.spec)})
            _put(tensors, f"{q}/scale", record.scale)
            if record.zero_point is not None:
                _put(tensors, f"{q}/zero_point", record.zero_point)
            continue
        covered.add(q)
        if id(record) in by_record:
            by_record[id(record)]["aliases"].append([module_name, tensor_name])
            continue
        if isinstance(record, PalettizedTensor):
            entry = _encode_palettized(q, record, tensors)
        elif isinstance(record, QuantizedTensor):
            entry = _encode_quantized(q, record, tensors)
        else:
            raise CompressionError(f"{q}: cannot store a {type(record).__name__} record")
        entry.update(module=module_name, tensor=tensor_name, spec=specs.add(record.spec), aliases=[],
                     shape=list(record.shape), dtype=_dtype_name(record.dtype))
        by_record[id(record)] = entry
        entries.append(entry)
    tied: dict[str, str] = {}
    stored: dict[int, str] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if key in covered:
            continue
        if id(value) in stored:
            tied[key] = stored[id(value)]
            continue
        stored[id(value)] = key
        _put(tensors, key, value)
    identity = [name for name, module in model.named_modules() if name and type(module) is nn.Identity]
    header = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "bitsmith_version": bitsmith.__version__,
              "specs": specs.items, "records": entries, "tied": tied, "identity_modules": identity}
    return tensors, header


def _put(tensors: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    tensors[key] = value.detach().to("cpu").contiguous().clone()


def _encode_palettized(q: str, record: PalettizedTensor, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    _put(tensors, f"{q}/indices", pack_bits(record.indices, record.n_bits))
    entry: dict[str, Any] = {"kind": "palettized", "axis": record.axis, "index_shape": list(record.indices.shape),
                             "lut_shape": list(record.lut.shape), "lut": "float"}
    lq = record.lut_quant
    if lq is not None and torch.equal(_lut_from_quant(lq), record.lut):
        entry["lut"] = "quantized"
        _put(tensors, f"{q}/lut_int", lq.int_lut)
        _put(tensors, f"{q}/lut_scale", lq.scale)
        if lq.zero_point is not None:
            _put(tensors, f"{q}/lut_zero_point", lq.zero_point)
        entry["lut_spec"] = to_dict(lq.spec)
    else:
        # Without lut_quant, or a third-party lut_quant that does not decode to the LUT exactly:
        # store the float LUT itself (exactness first), at the weight dtype when lossless.
        _put(tensors, f"{q}/lut", _narrow_lossless(record.lut, record.dtype))
        entry["lut_dtype"] = _dtype_name(record.lut.dtype)
        if lq is not None:
            entry["lut_spec"] = to_dict(lq.spec)
            _put(tensors, f"{q}/lut_int", lq.int_lut)
            _put(tensors, f"{q}/lut_scale", lq.scale)
            if lq.zero_point is not None:
                _put(tensors, f"{q}/lut_zero_point", lq.zero_point)
    if record.per_channel_scale is not None:
        _put(tensors, f"{q}/per_channel_scale", record.per_channel_scale)
    outliers = record.outliers
    if outliers is not None and outliers.nnz:
        if int(outliers.indices.max()) >= 2**31:
            raise CompressionError(f"{q}: outlier positions beyond 2**31 do not fit the format's int32 positions")
        _put(tensors, f"{q}/outlier_positions", outliers.indices.to(torch.int32))
        _put(tensors, f"{q}/outlier_values", outliers.values)
    return entry


def _encode_quantized(q: str, record: QuantizedTensor, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": "quantized", "int_dtype": _dtype_name(record.int_data.dtype),
                             "int_shape": list(record.int_data.shape), "packed_bits": None}
    bits = record.spec.n_bits
    packed = bits < 8 and not record.int_data.is_floating_point()
    if packed:
        lo = int(record.spec.quant_range[0])
        _put(tensors, f"{q}/int_data", pack_bits(record.int_data.to(torch.int64) - lo, bits))
        entry.update(packed_bits=bits, offset=lo)
    else:
        _put(tensors, f"{q}/int_data", record.int_data)
    _put(tensors, f"{q}/scale", record.scale)
    if record.zero_point is not None:
        zp = record.zero_point
        entry.update(zp_dtype=_dtype_name(zp.dtype), zp_shape=list(zp.shape))
        _put(tensors, f"{q}/zero_point", pack_bits(zp.to(torch.int64) - lo, bits) if packed else zp)
    return entry


def write(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write ``model`` (with its compressed records) to ``path``; returns the path."""
    from safetensors.torch import save_file

    tensors, header = encode(model)
    index, chunks = [], []
    for key, value in tensors.items():
        index.append([key, _dtype_name(value.dtype), list(value.shape)])
        chunks.append(value.reshape(-1).contiguous().view(torch.uint8))
    header["tensors"] = index
    packed_header = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    container = {DATA_KEY: torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8),
                 HEADER_KEY: torch.frombuffer(bytearray(packed_header), dtype=torch.uint8)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outer = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "header": f"{HEADER_KEY} (zlib JSON)"}
    save_file(container, str(path), metadata={METADATA_KEY: json.dumps(outer, separators=(",", ":"))})
    return path


# --------------------------------------------------------------------------- decode


def read_header(path: Union[str, Path]) -> dict[str, Any]:
    """The bitsmith JSON header of a file (``ValueError`` when it is not a bitsmith packed file)."""
    return _open(path)[0]


def read_tensors(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Every logical tensor of a packed file by name (packed indices as stored), without a model."""
    header, data = _open(path)
    return _split(header, data, path)


def _open(path: Union[str, Path]) -> tuple[dict[str, Any], Any]:
    """(header, data bytes) of a packed file; the header is checked before the data is read."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        _check_header(fh.metadata() or {}, path)
        if HEADER_KEY not in fh.keys():
            raise ValueError(f"{path}: no {HEADER_KEY!r} tensor; the file is damaged")
        header = json.loads(zlib.decompress(fh.get_tensor(HEADER_KEY).numpy().tobytes()))
        data = fh.get_tensor(DATA_KEY)
    return header, data


def _split(header: dict[str, Any], data: torch.Tensor, path: Any) -> dict[str, torch.Tensor]:
    """The logical tensors, cut from the data bytes in the order the header lists them."""
    tensors, offset = {}, 0
    for key, dtype_name, shape in header["tensors"]:
        dtype = _dtype(dtype_name)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if offset + nbytes > data.numel():
            raise ValueError(f"{path}: tensor {key!r} runs past the end of the data; the file is truncated")
        tensors[key] = data[offset:offset + nbytes].clone().view(dtype).reshape(shape)
        offset += nbytes
    return tensors


def _check_header(meta: dict[str, str], path: Any) -> dict[str, Any]:
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: not a bitsmith packed file (no {METADATA_KEY!r} metadata); "
                         "plain safetensors state dicts load with safetensors.torch.load_file")
    header = json.loads(meta[METADATA_KEY])
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: format {header.get('format')!r} is not {FORMAT!r}")
    version = header.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version!r} is newer than this reader ({SCHEMA_VERSION}); "
                         "upgrade bitsmith-export-safetensors")
    return header


def read(path: Union[str, Path], model: nn.Module) -> nn.Module:
    """Load the file at ``path`` into ``model`` (the uncompressed architecture) and attach its records.

    Every state-dict key of ``model`` must be in the file (dense, compressed or tied) and
    every record's module and shape must exist in ``model``; errors name the key.
    """
    header, data = _open(path)
    tensors = _split(header, data, path)
    specs = [_spec(item) for item in header["specs"]]
    dense = {k: v for k, v in tensors.items() if "/" not in k}
    for alias, key in header.get("tied", {}).items():
        dense[alias] = dense[key]
    _replay_structure(model, header.get("identity_modules", []), dense, path)
    expected = model.state_dict(keep_vars=True)
    covered = set()
    for entry in header["records"]:
        if entry["kind"] != "activation":
            covered.add(_qualified(entry["module"], entry["tensor"]))
            covered.update(_qualified(m, t) for m, t in entry["aliases"])
    missing = [k for k in expected if k not in dense and k not in covered]
    unexpected = [k for k in dense if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        raise ValueError(f"{path}: the file does not match the model from model_factory ({'; '.join(parts)})")
    model.load_state_dict(dense, strict=False)
    for entry in header["records"]:
        module = _module(model, entry["module"], path)
        q = _qualified(entry["module"], entry["tensor"])
        spec = specs[entry["spec"]]
        if entry["kind"] == "activation":
            zp = tensors.get(f"{q}/zero_point")
            compressed.attach(module, entry["tensor"], ActivationQuant(scale=tensors[f"{q}/scale"], zero_point=zp,
                                                                      spec=spec))
            continue
        if entry["kind"] == "palettized":
            record = _decode_palettized(q, entry, spec, tensors)
        elif entry["kind"] == "quantized":
            record = _decode_quantized(q, entry, spec, tensors)
        else:
            raise ValueError(f"{path}: record {q}: unknown kind {entry['kind']!r}")
        target = getattr(module, entry["tensor"], None)
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != tuple(record.shape):
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else "no such tensor"
            raise ValueError(f"{path}: record {q} has shape {tuple(record.shape)}, the model's is {got}")
        for alias_module, alias_tensor in entry["aliases"]:
            compressed.attach(_module(model, alias_module, path), alias_tensor, record)
        compressed.apply(module, entry["tensor"], record)
    return model


def _replay_structure(model: nn.Module, identity: list[str], dense: dict[str, torch.Tensor], path: Any) -> None:
    """Repeat the structural edits compression made (e.g. a quantizer folding batch norms).

    Modules saved as ``nn.Identity`` replace the factory's module of that name, and a
    parameter in the file that the factory registered as ``None`` (a convolution built
    with ``bias=False`` whose bias came from folding) is created.
    """
    for name in identity:
        parent_name, _, child = name.rpartition(".")
        parent = _module(model, parent_name, path)
        if child not in parent._modules:
            raise ValueError(f"{path}: the file replaces module {name!r} by Identity, but the model from "
                             "model_factory has no such module; is it the same architecture?")
        if type(parent._modules[child]) is not nn.Identity:
            parent._modules[child] = nn.Identity()
    for key, value in dense.items():
        owner_name, _, pname = key.rpartition(".")
        try:
            owner = model.get_submodule(owner_name) if owner_name else model
        except AttributeError:
            continue
        if pname in owner._parameters and owner._parameters[pname] is None:
            owner._parameters[pname] = nn.Parameter(torch.empty_like(value))


def _spec(item: dict[str, Any]) -> Union[PalettizationSpec, QuantizationSpec]:
    cls = PalettizationSpec if item["type"] == "palettization" else QuantizationSpec
    return from_dict(item["spec"], cls)


def _module(model: nn.Module, name: str, path: Any) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise ValueError(f"{path}: the file has records for module {name!r}, which the model from "
                         "model_factory does not have; is it the same architecture?") from None


def _decode_palettized(q: str, entry: dict[str, Any], spec: PalettizationSpec,
                       tensors: dict[str, torch.Tensor]) -> PalettizedTensor:
    index_shape = tuple(entry["index_shape"])
    indices = unpack_bits(tensors[f"{q}/indices"], spec.n_bits, math.prod(index_shape)).reshape(index_shape)
    lut_quant = None
    if f"{q}/lut_int" in tensors:
        lut_quant = LutQuantization(int_lut=tensors[f"{q}/lut_int"], scale=tensors[f"{q}/lut_scale"],
                                    zero_point=tensors.get(f"{q}/lut_zero_point"),
                                    spec=from_dict(entry["lut_spec"], QuantizationSpec))
    if entry["lut"] == "quantized":
        lut = _lut_from_quant(lut_quant)
    else:
        lut = tensors[f"{q}/lut"].to(_dtype(entry["lut_dtype"]))
    extra = {}
    if f"{q}/outlier_positions" in tensors:
        extra["outliers"] = SparseOutliers(indices=tensors[f"{q}/outlier_positions"].to(torch.int64),
                                           values=tensors[f"{q}/outlier_values"])
    return PalettizedTensor(lut=lut, indices=indices.contiguous(), spec=spec, shape=tuple(entry["shape"]),
                            dtype=_dtype(entry["dtype"]), axis=entry["axis"],
                            per_channel_scale=tensors.get(f"{q}/per_channel_scale"), lut_quant=lut_quant, **extra)


def _decode_quantized(q: str, entry: dict[str, Any], spec: QuantizationSpec,
                      tensors: dict[str, torch.Tensor]) -> QuantizedTensor:
    int_shape = tuple(entry["int_shape"])
    data = tensors[f"{q}/int_data"]
    if entry.get("packed_bits"):
        values = unpack_bits(data, entry["packed_bits"], math.prod(int_shape)).to(torch.int64) + entry["offset"]
        data = values.to(_dtype(entry["int_dtype"]))
    data = data.reshape(int_shape)
    zp = tensors.get(f"{q}/zero_point")
    if zp is not None and entry.get("packed_bits"):
        zp_shape = tuple(entry["zp_shape"])
        zp = (unpack_bits(zp, entry["packed_bits"], math.prod(zp_shape)).to(torch.int64) + entry["offset"])
        zp = zp.to(_dtype(entry["zp_dtype"])).reshape(zp_shape)
    return QuantizedTensor(int_data=data, scale=tensors[f"{q}/scale"], zero_point=zp,
                           spec=spec, shape=tuple(entry["shape"]), dtype=_dtype(entry["dtype"]))


def build_model(model_factory: Union[Callable[[], nn.Module], nn.Module]) -> nn.Module:
    """An uncompressed model instance from a factory callable (or an instance, used as is)."""
    if isinstance(model_factory, nn.Module):
        return model_factory
    if not callable(model_factory):
        raise TypeError(f"model_factory: expected a callable returning an nn.Module, got {model_factory!r}")
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory: returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def header_nbytes(path: Union[str, Path]) -> int:
    """Bytes that are not tensor data: the safetensors prefix and JSON plus the compressed bitsmith header."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        table = json.loads(fh.read(size))
    start, end = table.get(HEADER_KEY, {}).get("data_offsets", (0, 0))
    return 8 + size + (end - start)


__all__ = ["DATA_KEY", "FORMAT", "HEADER_KEY", "METADATA_KEY", "SCHEMA_VERSION", "build_model", "encode", "header_nbytes", "read",
           "read_header", "read_tensors", "write"]

