"""The packed format (schema 2): records and state <-> named tensors + a JSON header. Spec: docs/format.md.

Every stored part is its own safetensors tensor, so any safetensors reader can
memory-map one layer's parts:

- a state-dict entry that no record covers, under its own key (tied tensors once;
  the other names are listed in the header's ``tied``);
- a palettized tensor ``q`` (``<module>.<tensor>``): ``q.indices`` (uint8, the indices in
  row-major order bit-packed at ``n_bits`` by :mod:`bitsmith.packing`), ``q.lut`` (float,
  ``(num_luts, 2**n_bits, cluster_dim)``) or, for a quantized LUT, ``q.lut_int`` +
  ``q.lut_scale`` (+ ``q.lut_zero_point``); ``q.per_channel_scale``; ``q.outlier_positions``
  (int32) + ``q.outlier_values``;
- a quantized tensor ``q``: ``q.int_data`` (int8/uint8/float8 as is; int4/uint4 bit-packed at
  4 bits with an offset of ``-qmin``), ``q.scale`` (+ ``q.zero_point``, packed like the integers);
- an activation quantization at ``<module>.input.<i>``/``output.<i>``: ``….scale`` (+ ``….zero_point``).

Each record entry in the header names its parts (``parts``: role -> tensor name), so a
reader never guesses names. :mod:`.container` writes and verifies the file.
"""

from __future__ import annotations

import json
import math
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

from .header import Fields, FormatError, shown

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)}

WeightRecord = Union[PalettizedTensor, QuantizedTensor]

RECORD_STATE_MARKER = "_bitsmith_"
"""State-dict names containing this are the core's own view of a record (``fc.weight_bitsmith_lut``); the
file stores the record as its parts instead, and a loading model's such entries are rebuilt from them."""


def _is_record_state(key: str) -> bool:
    return RECORD_STATE_MARKER in key.rpartition(".")[2]


def dtype_name(dtype: torch.dtype) -> str:
    """The header's name of a torch dtype (``float32``, ``int8``, ...)."""
    return str(dtype).removeprefix("torch.")


def qualified(module_name: str, tensor_name: str) -> str:
    """``module.tensor`` (just ``tensor`` for the root module)."""
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


def lut_from_quant(q: LutQuantization) -> torch.Tensor:
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


class _Parts:
    """The named tensors of one file; a name used twice is an error naming both owners."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, value: torch.Tensor) -> str:
        if name in self.tensors:
            raise CompressionError(f"{name}: two stored parts would share this tensor name in the file "
                                   "(a module or buffer name collides with a compressed part's name)")
        self.tensors[name] = value.detach().to("cpu").contiguous()
        return name


def encode(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The named tensors and the JSON header (without checksums) that represent ``model``."""
    specs, parts = _Specs(), _Parts()
    entries: list[dict[str, Any]] = []
    by_record: dict[int, dict[str, Any]] = {}
    covered: set[str] = set()
    record_tensors: set[int] = set()
    for module_name, _module, tensor_name, record in compressed.iter_records(model):
        q = qualified(module_name, tensor_name)
        record_tensors.update(id(t) for t in bitsmith.sizes.record_tensors(record))
        if isinstance(record, ActivationQuant):
            entry = {"kind": "activation", "module": module_name, "tensor": tensor_name,
                     "spec": specs.add(record.spec), "parts": {"scale": parts.put(f"{q}.scale", record.scale)}}
            if record.zero_point is not None:
                entry["parts"]["zero_point"] = parts.put(f"{q}.zero_point", record.zero_point)
            entries.append(entry)
            continue
        covered.add(q)
        if id(record) in by_record:
            by_record[id(record)]["aliases"].append([module_name, tensor_name])
            continue
        if isinstance(record, PalettizedTensor):
            entry = _encode_palettized(q, record, parts)
        elif isinstance(record, QuantizedTensor):
            entry = _encode_quantized(q, record, parts)
        else:
            raise CompressionError(f"{q}: the safetensors backend cannot store a {type(record).__name__} record")
        entry.update(module=module_name, tensor=tensor_name, spec=specs.add(record.spec), aliases=[],
                     shape=list(record.shape), dtype=dtype_name(record.dtype))
        by_record[id(record)] = entry
        entries.append(entry)
    tied: dict[str, str] = {}
    stored: dict[int, str] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if key in covered or id(value) in record_tensors or _is_record_state(key):  # stored as the record's parts
            continue
        if id(value) in stored:
            tied[key] = stored[id(value)]
            continue
        stored[id(value)] = key
        parts.put(key, value)
    identity = [name for name, module in model.named_modules() if name and type(module) is nn.Identity]
    header = {"bitsmith_version": bitsmith.__version__, "specs": specs.items, "records": entries, "tied": tied,
              "identity_modules": identity}
    return parts.tensors, header


def _encode_palettized(q: str, record: PalettizedTensor, parts: _Parts) -> dict[str, Any]:
    names = {"indices": parts.put(f"{q}.indices", pack_bits(record.indices, record.n_bits))}
    entry: dict[str, Any] = {"kind": "palettized", "axis": record.axis, "index_shape": list(record.indices.shape),
                             "lut_shape": list(record.lut.shape), "lut": "float", "parts": names}
    lq = record.lut_quant
    exact = lq is not None and torch.equal(lut_from_quant(lq), record.lut)
    if exact:
        entry["lut"] = "quantized"
    else:
        # Without lut_quant, or a third-party lut_quant that does not decode to the LUT exactly:
        # store the float LUT itself (exactness first), at the weight dtype when lossless.
        names["lut"] = parts.put(f"{q}.lut", _narrow_lossless(record.lut, record.dtype))
        entry["lut_dtype"] = dtype_name(record.lut.dtype)
    if lq is not None:
        entry["lut_spec"] = to_dict(lq.spec)
        names["lut_int"] = parts.put(f"{q}.lut_int", lq.int_lut)
        names["lut_scale"] = parts.put(f"{q}.lut_scale", lq.scale)
        if lq.zero_point is not None:
            names["lut_zero_point"] = parts.put(f"{q}.lut_zero_point", lq.zero_point)
    if record.per_channel_scale is not None:
        names["per_channel_scale"] = parts.put(f"{q}.per_channel_scale", record.per_channel_scale)
    outliers = record.outliers
    if outliers is not None and outliers.nnz:
        if int(outliers.indices.max()) >= 2**31:
            raise CompressionError(f"{q}: outlier positions beyond 2**31 do not fit the format's int32 positions")
        names["outlier_positions"] = parts.put(f"{q}.outlier_positions", outliers.indices.to(torch.int32))
        names["outlier_values"] = parts.put(f"{q}.outlier_values", outliers.values)
    return entry


def _encode_quantized(q: str, record: QuantizedTensor, parts: _Parts) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": "quantized", "int_dtype": dtype_name(record.int_data.dtype),
                             "int_shape": list(record.int_data.shape), "packed_bits": None, "offset": 0}
    bits = record.spec.n_bits
    packed = bits < 8 and not record.int_data.is_floating_point()
    lo = int(record.spec.quant_range[0])
    if packed:
        data = pack_bits(record.int_data.to(torch.int64) - lo, bits)
        entry.update(packed_bits=bits, offset=lo)
    else:
        data = record.int_data
    names = {"int_data": parts.put(f"{q}.int_data", data), "scale": parts.put(f"{q}.scale", record.scale)}
    if record.zero_point is not None:
        zp = record.zero_point
        entry.update(zp_dtype=dtype_name(zp.dtype), zp_shape=list(zp.shape))
        names["zero_point"] = parts.put(f"{q}.zero_point", pack_bits(zp.to(torch.int64) - lo, bits) if packed else zp)
    entry["parts"] = names
    return entry


# --------------------------------------------------------------------------- decode


class Decoder:
    """Turns a verified header + tensors into records on a model; every inconsistency is a :class:`FormatError`."""

    def __init__(self, path: Union[str, Path], header: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.path = Path(path)
        self.fields = Fields(path)
        self.header = header
        self.tensors = tensors
        f = self.fields
        self.specs = [self._spec(item, f"specs[{i}]") for i, item in enumerate(f.get(header, "specs", list, ""))]
        self.records = f.get(header, "records", list, "")
        self.tied = f.get(header, "tied", dict, "")
        self.identity = f.get(header, "identity_modules", list, "")

    # ---------------------------------------------------------------- model-level steps

    def apply(self, model: nn.Module) -> nn.Module:
        """Load the file's dense tensors into ``model`` and attach its records."""
        f = self.fields
        owned = set()
        for i, entry in enumerate(self.records):
            for role, name in f.get(entry, "parts", dict, f"records[{i}]").items():
                if not isinstance(name, str) or name not in self.tensors:
                    raise f.error(f"records[{i}].parts.{role}", f"names tensor {shown(name)}, which is not in the file")
                owned.add(name)
        dense = {k: v for k, v in self.tensors.items() if k not in owned}
        for alias, key in self.tied.items():
            if not isinstance(key, str) or key not in dense:
                raise f.error(f"tied.{alias}", f"names {shown(key)}, which is not a stored dense tensor")
            dense[alias] = dense[key]
        self._replay_structure(model, dense)
        expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if not _is_record_state(k)}
        covered = set()
        for i, entry in enumerate(self.records):
            where = f"records[{i}]"
            if f.get(entry, "kind", str, where) != "activation":
                covered.add(qualified(f.get(entry, "module", str, where), f.get(entry, "tensor", str, where)))
                for j, alias in enumerate(f.get(entry, "aliases", list, where)):
                    covered.add(qualified(*f.name_pair(alias, f"{where}.aliases[{j}]")))
        missing = [k for k in expected if k not in dense and k not in covered]
        unexpected = [k for k in dense if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing from the file: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
            if unexpected:
                parts.append(f"not in the model: {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
            raise FormatError(f"{self.path}: the file does not match the model from model_factory "
                              f"({'; '.join(parts)})")
        for key, value in dense.items():
            if tuple(expected[key].shape) != tuple(value.shape):
                raise FormatError(f"{self.path}: tensor {key!r} has shape {tuple(value.shape)} in the file, "
                                  f"{tuple(expected[key].shape)} in the model from model_factory")
        model.load_state_dict(dense, strict=False)
        for i, entry in enumerate(self.records):
            self._attach(model, entry, f"records[{i}]")
        return model

    def _attach(self, model: nn.Module, entry: dict[str, Any], where: str) -> None:
        f = self.fields
        module_name, tensor_name = f.get(entry, "module", str, where), f.get(entry, "tensor", str, where)
        module = self._module(model, module_name, f"{where}.module")
        spec = self._spec_ref(entry, where)
        kind = f.get(entry, "kind", str, where)
        if kind == "activation":
            if not isinstance(spec, QuantizationSpec):
                raise f.error(f"{where}.spec", "an activation record needs a quantization spec")
            scale = self._part(entry, "scale", where)
            zp = self._part(entry, "zero_point", where, optional=True)
            compressed.attach(module, tensor_name, ActivationQuant(scale=scale, zero_point=zp, spec=spec))
            return
        if kind == "palettized" and isinstance(spec, PalettizationSpec):
            record: WeightRecord = self._palettized(entry, spec, where)
        elif kind == "quantized" and isinstance(spec, QuantizationSpec):
            record = self._quantized(entry, spec, where)
        else:
            raise f.error(f"{where}.kind", f"{shown(kind)} with a {type(spec).__name__} is not one of "
                                           "'palettized' (palettization spec), 'quantized' (quantization spec), "
                                           "'activation'")
        target = getattr(module, tensor_name, None)
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != tuple(record.shape):
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else "no such tensor"
            raise FormatError(f"{self.path}: record {qualified(module_name, tensor_name)} has shape "
                              f"{tuple(record.shape)}, the model's is {got}")
        try:
            compressed.apply(module, tensor_name, record)
        except (RuntimeError, IndexError, ValueError, TypeError) as exc:
            raise f.error(where, f"its tensors do not form a valid record ({shown(str(exc))})") from None
        for j, alias in enumerate(f.get(entry, "aliases", list, where)):
            alias_module, alias_tensor = f.name_pair(alias, f"{where}.aliases[{j}]")
            compressed.attach(self._module(model, alias_module, f"{where}.aliases[{j}]"), alias_tensor, record)

    def _replay_structure(self, model: nn.Module, dense: dict[str, torch.Tensor]) -> None:
        """Repeat the structural edits compression made (e.g. a quantizer folding batch norms).

        Modules saved as ``nn.Identity`` replace the factory's module of that name, and a
        parameter in the file that the factory registered as ``None`` (a convolution built
        with ``bias=False`` whose bias came from folding) is created.
        """
        for i, name in enumerate(self.identity):
            where = f"identity_modules[{i}]"
            if not isinstance(name, str) or not name:
                raise self.fields.error(where, f"expected a module name, got {shown(name)}")
            parent_name, _, child = name.rpartition(".")
            parent = self._module(model, parent_name, where)
            if child not in parent._modules:
                raise FormatError(f"{self.path}: the file replaces module {name!r} by Identity, but the model from "
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

    # ---------------------------------------------------------------- records

    def _palettized(self, entry: dict[str, Any], spec: PalettizationSpec, where: str) -> PalettizedTensor:
        f = self.fields
        shape = f.shape(entry, "shape", where)
        axis = f.integer(entry, "axis", where, 0, max(len(shape) - 1, 0))
        d = spec.cluster_dim
        index_shape = f.shape(entry, "index_shape", where)
        want_index = tuple(s // d if k == axis else s for k, s in enumerate(shape))
        if index_shape != want_index or shape[axis] % d:
            raise f.error(f"{where}.index_shape", f"{list(index_shape)} does not fit shape {list(shape)} with "
                                                  f"cluster_dim {d} along axis {axis} (expected {list(want_index)})")
        lut_shape = f.shape(entry, "lut_shape", where)
        if (len(lut_shape) != 3 or lut_shape[1:] != (spec.n_clusters, d) or not lut_shape[0]
                or shape[axis] % lut_shape[0]):
            raise f.error(f"{where}.lut_shape", f"{list(lut_shape)} is not [num_luts, {spec.n_clusters}, {d}] "
                                                f"with num_luts dividing {shape[axis] if shape else 0}")
        packed = self._part(entry, "indices", where, dtype=torch.uint8)
        try:
            indices = unpack_bits(packed, spec.n_bits, math.prod(index_shape)).reshape(index_shape)
        except ValueError as exc:
            raise f.error(f"{where}.parts.indices", str(exc)) from None
        lut_quant = None
        if "lut_int" in f.get(entry, "parts", dict, where):
            lut_spec = self._spec_item(f.get(entry, "lut_spec", dict, where), QuantizationSpec, f"{where}.lut_spec")
            lut_quant = LutQuantization(int_lut=self._part(entry, "lut_int", where, shape=lut_shape),
                                        scale=self._part(entry, "lut_scale", where, shape=(lut_shape[0],)),
                                        zero_point=self._part(entry, "lut_zero_point", where, optional=True,
                                                              shape=(lut_shape[0],)),
                                        spec=lut_spec)
        lut_kind = f.get(entry, "lut", str, where)
        if lut_kind == "quantized" and lut_quant is not None:
            lut = lut_from_quant(lut_quant)
        elif lut_kind == "float":
            lut_dtype = self._dtype(f.get(entry, "lut_dtype", str, where), f"{where}.lut_dtype")
            lut = self._part(entry, "lut", where, shape=lut_shape).to(lut_dtype)
        else:
            raise f.error(f"{where}.lut", f"{shown(lut_kind)} is not 'float' or 'quantized' (with parts.lut_int)")
        extra = {}
        positions = self._part(entry, "outlier_positions", where, optional=True, dtype=torch.int32)
        if positions is not None:
            values = self._part(entry, "outlier_values", where, shape=tuple(positions.shape))
            if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= math.prod(shape)):
                raise f.error(f"{where}.parts.outlier_positions", f"positions outside [0, {math.prod(shape)})")
            extra["outliers"] = SparseOutliers(indices=positions.to(torch.int64), values=values)
        pcs = self._part(entry, "per_channel_scale", where, optional=True, shape=(shape[0],) if shape else ())
        return PalettizedTensor(lut=lut, indices=indices.contiguous(), spec=spec, shape=shape,
                                dtype=self._dtype(f.get(entry, "dtype", str, where), f"{where}.dtype"), axis=axis,
                                per_channel_scale=pcs, lut_quant=lut_quant, **extra)

    def _quantized(self, entry: dict[str, Any], spec: QuantizationSpec, where: str) -> QuantizedTensor:
        f = self.fields
        shape = f.shape(entry, "shape", where)
        int_shape = f.shape(entry, "int_shape", where)
        if int_shape != shape:
            raise f.error(f"{where}.int_shape", f"{list(int_shape)} differs from shape {list(shape)}")
        int_dtype = self._dtype(f.get(entry, "int_dtype", str, where), f"{where}.int_dtype")
        bits = f.get(entry, "packed_bits", int, where, optional=True)
        offset = f.integer(entry, "offset", where, -128, 0)
        data = self._part(entry, "int_data", where)
        scale = self._part(entry, "scale", where)
        if scale.dim() != len(shape) or any(s == 0 or full % s for full, s in zip(shape, scale.shape)):
            raise f.error(f"{where}.parts.scale", f"shape {list(scale.shape)} does not divide the weight's "
                                                  f"{list(shape)}")
        zp = self._part(entry, "zero_point", where, optional=True)
        try:
            if bits:
                data = (unpack_bits(data, bits, math.prod(int_shape)).to(torch.int64) + offset).to(int_dtype)
                if zp is not None:
                    zp_shape = f.shape(entry, "zp_shape", where)
                    zp = unpack_bits(zp, bits, math.prod(zp_shape)).to(torch.int64) + offset
                    zp = zp.to(self._dtype(f.get(entry, "zp_dtype", str, where), f"{where}.zp_dtype")).reshape(zp_shape)
            data = data.reshape(int_shape)
        except (ValueError, RuntimeError) as exc:
            raise f.error(f"{where}.parts.int_data", shown(str(exc))) from None
        if zp is not None and tuple(zp.shape) != tuple(scale.shape):
            raise f.error(f"{where}.parts.zero_point", f"shape {list(zp.shape)} differs from the scale's "
                                                       f"{list(scale.shape)}")
        return QuantizedTensor(int_data=data, scale=scale, zero_point=zp, spec=spec, shape=shape,
                               dtype=self._dtype(f.get(entry, "dtype", str, where), f"{where}.dtype"))

    # ---------------------------------------------------------------- helpers

    def _part(self, entry: dict[str, Any], role: str, where: str, *, optional: bool = False,
              dtype: Any = None, shape: Any = None) -> Any:
        f = self.fields
        name = f.get(f.get(entry, "parts", dict, where), role, str, f"{where}.parts", optional=optional)
        if name is None:
            return None
        if name not in self.tensors:
            raise f.error(f"{where}.parts.{role}", f"names tensor {shown(name)}, which is not in the file")
        tensor = self.tensors[name]
        if dtype is not None and tensor.dtype != dtype:
            raise f.error(f"{where}.parts.{role}", f"tensor {name!r} is {dtype_name(tensor.dtype)}, "
                                                   f"expected {dtype_name(dtype)}")
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise f.error(f"{where}.parts.{role}", f"tensor {name!r} has shape {list(tensor.shape)}, "
                                                   f"expected {list(shape)}")
        return tensor

    def _spec_ref(self, entry: dict[str, Any], where: str) -> Union[PalettizationSpec, QuantizationSpec]:
        index = self.fields.integer(entry, "spec", where, 0, max(len(self.specs) - 1, 0))
        if not self.specs:
            raise self.fields.error(f"{where}.spec", "refers to a spec but the header's specs list is empty")
        return self.specs[index]

    def _spec(self, item: Any, where: str) -> Union[PalettizationSpec, QuantizationSpec]:
        kind = self.fields.get(item, "type", str, where)
        classes = {"palettization": PalettizationSpec, "quantization": QuantizationSpec}
        if kind not in classes:
            raise self.fields.error(f"{where}.type", f"{shown(kind)} is not one of {', '.join(classes)}")
        return self._spec_item(self.fields.get(item, "spec", dict, where), classes[kind], f"{where}.spec")

    def _spec_item(self, data: dict[str, Any], cls: type, where: str) -> Any:
        try:
            return from_dict(data, cls)
        except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
            raise self.fields.error(where, shown(str(exc))) from None

    def _dtype(self, name: str, where: str) -> torch.dtype:
        if name not in _DTYPES:
            raise self.fields.error(where, f"{shown(name)} is not one of {', '.join(_DTYPES)}")
        return _DTYPES[name]

    def _module(self, model: nn.Module, name: str, where: str) -> nn.Module:
        try:
            return model.get_submodule(name) if name else model
        except AttributeError:
            raise FormatError(f"{self.path}: header field {where} names module {name!r}, which the model from "
                              "model_factory does not have; is it the same architecture?") from None


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


__all__ = ["Decoder", "build_model", "dtype_name", "encode", "lut_from_quant", "qualified"]
