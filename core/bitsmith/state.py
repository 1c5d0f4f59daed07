"""Compressed records as module state: what ``state_dict()`` holds and ``load_state_dict()`` rebuilds.

Every record attached to a module (:func:`bitsmith.compressed.attach`) appears in
the module's ``state_dict`` as entries named ``<tensor>_bitsmith_<part>`` next to the
dense tensor, e.g. for ``fc.weight`` palettized::

    fc.weight                       the dense (dequantized) values, as before
    fc.weight_bitsmith_spec         uint8: UTF-8 JSON (record kind, spec, shape, dtype, axis)
    fc.weight_bitsmith_lut          (num_luts, 2**n_bits, cluster_dim) float32
    fc.weight_bitsmith_indices      uint8, the weight's shape with shape[axis] / cluster_dim
    fc.weight_bitsmith_scale        per-channel scales (when present)
    fc.weight_bitsmith_lut_int / _lut_scale / _lut_zero_point   stored LUT (``lut_qspec``)
    fc.weight_bitsmith_outlier_indices / _outlier_values        sparse outliers

A quantized weight has ``_int_data``, ``_scale``, ``_zero_point``; an activation record
(``input.0``) has ``input_0_bitsmith_spec``, ``_scale``, ``_zero_point``. The
entries are the record's own tensors (no copy), added by a state-dict hook, so a
compressed model costs no memory beyond its records. ``packed_indices`` (indices
bit-packed with :func:`bitsmith.packing.pack_bits`) may replace ``indices`` in files.

Loading: a module carrying records rebuilds them from these entries in a
load-state-dict pre-hook (``model.load_state_dict(sd)`` into a freshly prepared
model), and :func:`load_state_dict` installs the hook on an uncompressed model
first. A dense tensor missing from the state dict is filled from its record, so
files may omit it. Records are rebuilt bit-identically (same LUTs, indices,
scales, spec), hence so are the dense values.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from . import compressed
from .config.converter import from_dict, to_dict
from .config.specs import PalettizationSpec, QuantizationSpec

FORMAT_VERSION = 1
"""Version of the ``_bitsmith_spec`` JSON; a newer one is refused on load."""

MARKER = "_bitsmith_"
"""Separator between a tensor name and a part name in state-dict keys."""

_KEY = re.compile(r"^(?P<tensor>[^.]+?)" + MARKER + r"(?P<part>[a-z_]+)$")


def _encode(meta: dict) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(meta, sort_keys=True).encode()), dtype=torch.uint8)


def read_spec(t: torch.Tensor, where: str) -> dict:
    """The JSON of a ``<tensor>_bitsmith_spec`` entry; ``where`` names it in errors (bad data, newer format)."""
    try:
        meta = json.loads(bytes(t.detach().cpu().to(torch.uint8).numpy().tobytes()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not a bitsmith record spec ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{where}: record spec format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                         f"is not {FORMAT_VERSION}; this bitsmith cannot read it")
    return meta


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a bitsmith record spec")
    return value


def _palettized_parts(rec: compressed.PalettizedTensor) -> tuple[dict, dict[str, Optional[torch.Tensor]]]:
    meta = {"spec": to_dict(rec.spec), "shape": list(rec.shape), "dtype": dtype_name(rec.dtype), "axis": rec.axis}
    lq, out = rec.lut_quant, rec.outliers
    parts = {"lut": rec.lut, "indices": rec.indices, "scale": rec.per_channel_scale,
             "lut_int": None if lq is None else lq.int_lut, "lut_scale": None if lq is None else lq.scale,
             "lut_zero_point": None if lq is None else lq.zero_point,
             "outlier_indices": None if out is None else out.indices,
             "outlier_values": None if out is None else out.values}
    return meta, parts


def _palettized(meta: dict, parts: dict[str, torch.Tensor]) -> compressed.PalettizedTensor:
    spec = from_dict(meta["spec"], PalettizationSpec)
    shape, axis = tuple(meta["shape"]), int(meta["axis"])
    indices = parts.get("indices")
    if indices is None:
        idx_shape = list(shape)
        idx_shape[axis] //= spec.cluster_dim
        from .packing import unpack_bits

        count = int(torch.Size(idx_shape).numel())
        indices = unpack_bits(parts["packed_indices"], spec.n_bits, count).reshape(idx_shape)
    lut_quant = None
    if "lut_int" in parts:
        if spec.lut_qspec is None:
            raise ValueError(f"stored LUT integers (lut_int) for a spec without lut_qspec: {spec.describe()}")
        lut_quant = compressed.LutQuantization(parts["lut_int"], parts["lut_scale"], parts.get("lut_zero_point"),
                                               spec.lut_qspec)
    outliers = None
    if "outlier_indices" in parts:
        outliers = compressed.SparseOutliers(parts["outlier_indices"], parts["outlier_values"])
    return compressed.PalettizedTensor(lut=parts["lut"], indices=indices, spec=spec, shape=shape,
                                       dtype=_dtype(meta["dtype"]), axis=axis, per_channel_scale=parts.get("scale"),
                                       lut_quant=lut_quant, outliers=outliers)


def _quantized_parts(rec: compressed.QuantizedTensor) -> tuple[dict, dict[str, Optional[torch.Tensor]]]:
    meta = {"spec": to_dict(rec.spec), "shape": list(rec.shape), "dtype": dtype_name(rec.dtype)}
    return meta, {"int_data": rec.int_data, "scale": rec.scale, "zero_point": rec.zero_point}


def _quantized(meta: dict, parts: dict[str, torch.Tensor]) -> compressed.QuantizedTensor:
    return compressed.QuantizedTensor(int_data=parts["int_data"], scale=parts["scale"],
                                      zero_point=parts.get("zero_point"),
                                      spec=from_dict(meta["spec"], QuantizationSpec), shape=tuple(meta["shape"]),
                                      dtype=_dtype(meta["dtype"]))


def _activation_parts(rec: compressed.ActivationQuant) -> tuple[dict, dict[str, Optional[torch.Tensor]]]:
    return {"spec": to_dict(rec.spec)}, {"scale": rec.scale, "zero_point": rec.zero_point}


def _activation(meta: dict, parts: dict[str, torch.Tensor]) -> compressed.ActivationQuant:
    return compressed.ActivationQuant(scale=parts["scale"], zero_point=parts.get("zero_point"),
                                      spec=from_dict(meta["spec"], QuantizationSpec))


_KINDS: dict[type, tuple[str, Callable[[Any], tuple[dict, dict]]]] = {
    compressed.PalettizedTensor: ("palettized", _palettized_parts),
    compressed.QuantizedTensor: ("quantized", _quantized_parts),
    compressed.ActivationQuant: ("activation", _activation_parts),
}
_BUILDERS: dict[str, Callable[[dict, dict], Any]] = {"palettized": _palettized, "quantized": _quantized,
                                                     "activation": _activation}


def key_stem(name: str) -> str:
    """The state-dict stem of record ``name``: ``weight`` -> ``weight``, ``input.0`` -> ``input_0``."""
    return name.replace(".", "_")


def record_state(name: str, record: compressed.Record) -> dict[str, torch.Tensor]:
    """The state-dict entries (relative to the module) of ``record`` attached under ``name``."""
    for cls in type(record).__mro__:
        if cls in _KINDS:
            kind, to_parts = _KINDS[cls]
            break
    else:
        raise TypeError(f"{name}: cannot store a {type(record).__name__} record in a state dict")
    meta, parts = to_parts(record)
    meta.update(format=FORMAT_VERSION, kind=kind, name=name)
    stem = key_stem(name) + MARKER
    out = {stem + "spec": _encode(meta)}
    out.update({stem + part: t for part, t in parts.items() if t is not None})
    return out


def record_from_state(parts: Mapping[str, torch.Tensor], where: str = "record") -> tuple[str, compressed.Record]:
    """``(name, record)`` from one record's entries (part name -> tensor, ``spec`` included)."""
    if "spec" not in parts:
        raise ValueError(f"{where}: has {', '.join(sorted(parts))} but no {MARKER}spec entry")
    meta = read_spec(parts["spec"], where)
    kind = meta.get("kind")
    if kind not in _BUILDERS:
        raise ValueError(f"{where}: record kind {kind!r} is not one of {', '.join(_BUILDERS)}")
    try:
        return meta["name"], _BUILDERS[kind](meta, {k: v for k, v in parts.items() if k != "spec"})
    except KeyError as exc:
        raise ValueError(f"{where}: a {kind} record needs a {MARKER}{exc.args[0]} entry") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def module_entries(state_dict: Mapping[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """Record entries of the module at ``prefix`` (``"fc."``): ``{stem: {part: tensor}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix) and MARKER in key:
            match = _KEY.match(key[len(prefix):])
            if match:
                groups.setdefault(match["tensor"], {})[match["part"]] = value
    return groups


def _state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for name, record in compressed.records(module).items():
        for key, tensor in record_state(name, record).items():
            state_dict[prefix + key] = tensor.detach()


def _load_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
               missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    groups = module_entries(state_dict, prefix)
    loaded = set()
    for stem, parts in groups.items():
        try:
            name, record = record_from_state(parts, f"{prefix}{stem}")
        except (ValueError, TypeError) as exc:
            error_msgs.append(str(exc))
            continue
        for part in parts:
            state_dict.pop(f"{prefix}{stem}{MARKER}{part}")
        compressed.detach(module, name)
        compressed.attach(module, name, record)
        loaded.add(name)
        dense_key = prefix + name
        stored = name in module._parameters or name in module._buffers  # backends may compute it instead
        if stored and not isinstance(record, compressed.ActivationQuant) and dense_key not in state_dict:
            state_dict[dense_key] = record.dequantize()
    for name in [n for n in compressed.records(module) if n not in loaded and prefix + n in state_dict]:
        missing_keys.append(f"{prefix}{key_stem(name)}{MARKER}spec")
        compressed.detach(module, name)  # the dense values loaded replace what this record describes


def install_hooks(module: nn.Module) -> None:
    """Make ``module``'s ``state_dict()`` carry its records and ``load_state_dict()`` rebuild them (once per module)."""
    if module.__dict__.get("_bitsmith_state_hooks"):
        return
    module.register_state_dict_post_hook(_state_dict_hook)
    module.register_load_state_dict_pre_hook(_load_hook)
    module.__dict__["_bitsmith_state_hooks"] = True


def load_state_dict(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
    """``model.load_state_dict(state_dict, strict)`` that also rebuilds every compressed record in it.

    Works on an uncompressed model of the same architecture (records are attached
    where the state dict has them) as well as on a prepared one. Dense tensors the
    state dict leaves out are computed from their records. Returns what
    ``nn.Module.load_state_dict`` returns.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    for key in state_dict:
        if MARKER not in key:
            continue
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        if owner not in modules:
            raise KeyError(f"{key}: {type(model).__name__} has no module {owner!r} to hold this compressed record")
        install_hooks(modules[owner])
    return model.load_state_dict(dict(state_dict), strict=strict)


__all__ = ["FORMAT_VERSION", "MARKER", "dtype_name", "install_hooks", "key_stem", "load_state_dict", "module_entries",
           "read_spec", "record_from_state", "record_state"]
