"""Leaf specs: granularities, quantization specs and palettization specs.

These are small frozen attrs classes. Validators raise ``ValueError``/``TypeError``
whose text starts with the field name and lists the allowed values; the converter
prefixes the dotted path of the containing config.
"""

from __future__ import annotations

import enum
from typing import Union

import torch
from attrs import define, field

PALETTIZATION_N_BITS = (1, 2, 3, 4, 6, 8)
"""Bit widths a LUT index may have (LUT size is ``2 ** n_bits``)."""


def _choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        shown = ", ".join(str(a) for a in allowed)
        raise ValueError(f"{name}: {value!r} is not one of {shown}")


def _positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name}: expected an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name}: {value!r} must be >= 1")


def _axis(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name}: expected an integer, got {value!r}")
    _choice(attribute.name, value, (0, 1))


# --------------------------------------------------------------------------- granularity


@define(frozen=True, kw_only=True)
class PerTensorGranularity:
    """One LUT (or one scale) for the whole tensor. YAML: ``{type: per_tensor}``."""


@define(frozen=True, kw_only=True)
class PerGroupedChannelGranularity:
    """One LUT per group of ``group_size`` consecutive channels along ``axis``.

    YAML: ``{type: per_grouped_channel, axis: 0, group_size: 16}``. ``axis`` 0 is the
    output-channel axis of Linear/Conv weights, 1 the input-channel axis. The channel
    count must be divisible by ``group_size`` (checked per layer, naming the layer).
    """

    axis: int = field(default=0, validator=_axis)
    group_size: int = field(default=16, validator=_positive_int)


@define(frozen=True, kw_only=True)
class PerChannelGranularity:
    """One scale/zero point per channel along ``axis`` (quantization). YAML: ``{type: per_channel}``."""

    axis: int = field(default=0, validator=_axis)


@define(frozen=True, kw_only=True)
class PerBlockGranularity:
    """One scale per block of ``block_size`` elements along ``axis``, per channel of the other axis.

    YAML: ``{type: per_block, axis: 1, block_size: 32}`` (quantization).
    """

    axis: int = field(default=1, validator=_axis)
    block_size: int = field(default=32, validator=_positive_int)


PalettizationGranularity = Union[PerTensorGranularity, PerGroupedChannelGranularity]
QuantizationGranularity = Union[PerTensorGranularity, PerChannelGranularity, PerBlockGranularity]

GRANULARITY_TAGS: dict[str, type] = {
    "per_tensor": PerTensorGranularity,
    "per_grouped_channel": PerGroupedChannelGranularity,
    "per_channel": PerChannelGranularity,
    "per_block": PerBlockGranularity,
}
"""YAML ``type:`` tag of every granularity class."""


def granularity_tag(granularity: object) -> str:
    """The YAML ``type:`` tag of a granularity instance."""
    for tag, cls in GRANULARITY_TAGS.items():
        if type(granularity) is cls:
            return tag
    raise TypeError(f"not a granularity: {granularity!r}")


# --------------------------------------------------------------------------- quantization


class QuantizationScheme(str, enum.Enum):
    """How real values map to integers: symmetric (zero point fixed) or asymmetric (affine)."""

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"

    def __str__(self) -> str:
        return self.value


QUANT_DTYPE_NAMES = ("int8", "uint8", "int4", "uint4", "float8_e4m3fn", "float8_e5m2")
"""Names accepted for ``QuantizationSpec.dtype`` (a ``torch.dtype`` of the same name works too)."""

_INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}


def dtype_name(dtype: object) -> str:
    """Canonical name (``"int8"``) of a quantized dtype given as ``torch.int8`` or a string."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
    else:
        raise TypeError(f"dtype: expected a torch.dtype or one of {', '.join(QUANT_DTYPE_NAMES)}, got {dtype!r}")
    _choice("dtype", name, QUANT_DTYPE_NAMES)
    return name


def _to_dtype(value: object) -> object:
    name = dtype_name(value)
    return getattr(torch, name, name)


def _to_scheme(value: object) -> QuantizationScheme:
    if isinstance(value, QuantizationScheme):
        return value
    if isinstance(value, str):
        key = value.lower().removeprefix("quantizationscheme.")
        if key == "affine":
            key = "asymmetric"
        for scheme in QuantizationScheme:
            if scheme.value == key:
                return scheme
    raise ValueError(f"qscheme: {value!r} is not one of symmetric, asymmetric")


def _quant_granularity(instance, attribute, value) -> None:
    if not isinstance(value, (PerTensorGranularity, PerChannelGranularity, PerBlockGranularity)):
        raise TypeError(f"granularity: {value!r} is not one of per_tensor, per_channel, per_block")


def _observer_name(instance, attribute, value) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"observer: expected the name of a registered observer, got {value!r}")


@define(frozen=True, kw_only=True)
class QuantizationSpec:
    """How one tensor is quantized: integer/float8 dtype, scheme, granularity, observer.

    ``dtype`` accepts ``torch.int8`` or ``"int8"`` (also uint8, int4, uint4,
    float8_e4m3fn, float8_e5m2); ``qscheme`` accepts ``QuantizationScheme`` or
    ``"symmetric"``/``"asymmetric"``. float8 dtypes carry no zero point, so they
    only allow the symmetric scheme. ``observer`` names a registered observer
    (``"moving_average"``, ``"min_max"``) used to calibrate activation ranges.
    """

    dtype: object = field(default=torch.int8, converter=_to_dtype)
    qscheme: QuantizationScheme = field(default=QuantizationScheme.SYMMETRIC, converter=_to_scheme)
    granularity: QuantizationGranularity = field(factory=PerTensorGranularity, validator=_quant_granularity)
    observer: str = field(default="moving_average", validator=_observer_name)

    def __attrs_post_init__(self) -> None:
        if self.is_float8 and self.qscheme is not QuantizationScheme.SYMMETRIC:
            raise ValueError(
                f"qscheme: {self.qscheme.value!r} is not allowed with dtype {self.dtype_name}: "
                "float8 values have no zero point; use symmetric"
            )

    @property
    def dtype_name(self) -> str:
        """Canonical dtype name, e.g. ``"int8"``."""
        return dtype_name(self.dtype)

    @property
    def is_float8(self) -> bool:
        """True for the float8 dtypes."""
        return self.dtype_name.startswith("float8")

    @property
    def n_bits(self) -> int:
        """Storage bits of one value."""
        return 4 if self.dtype_name in ("int4", "uint4") else 8

    @property
    def quant_range(self) -> tuple[float, float]:
        """(min, max) representable value: integer range, or the float8 finite range."""
        name = self.dtype_name
        if name in _INTEGER_RANGES:
            return _INTEGER_RANGES[name]
        info = torch.finfo(getattr(torch, name))
        return (float(info.min), float(info.max))


# --------------------------------------------------------------------------- palettization

LUT_QUANT_DTYPES = ("int8", "uint8", "float8_e4m3fn", "float8_e5m2")
"""dtypes a LUT may be stored at through ``PalettizationSpec.lut_qspec``."""


def _n_bits(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"n_bits: expected an integer, got {value!r}")
    _choice("n_bits", value, PALETTIZATION_N_BITS)


def _palett_granularity(instance, attribute, value) -> None:
    if not isinstance(value, (PerTensorGranularity, PerGroupedChannelGranularity)):
        raise TypeError(f"granularity: {value!r} is not one of per_tensor, per_grouped_channel")


def _lut_qspec(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, QuantizationSpec):
        raise TypeError(f"lut_qspec: expected a QuantizationSpec or None, got {value!r}")
    _choice("lut_qspec.dtype", value.dtype_name, LUT_QUANT_DTYPES)


def _bool(instance, attribute, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name}: expected true or false, got {value!r}")


@define(frozen=True, kw_only=True)
class PalettizationSpec:
    """How one weight tensor is palettized.

    - ``n_bits``: bits per LUT index, one of 1, 2, 3, 4, 6, 8 (LUT of ``2**n_bits`` entries).
    - ``granularity``: ``PerTensorGranularity()`` (one LUT) or
      ``PerGroupedChannelGranularity(axis, group_size)`` (one LUT per channel group).
    - ``cluster_dim``: entries per LUT row; > 1 is vector palettization over
      consecutive channels (axis 0, or the grouped axis).
    - ``lut_qspec``: store LUT values at int8/uint8/float8 (with one scale per LUT).
    - ``enable_per_channel_scale``: divide each output channel (axis 0) by its max
      magnitude before clustering and store the scales.
    """

    n_bits: int = field(default=4, validator=_n_bits)
    granularity: PalettizationGranularity = field(factory=PerTensorGranularity, validator=_palett_granularity)
    cluster_dim: int = field(default=1, validator=_positive_int)
    lut_qspec: QuantizationSpec | None = field(default=None, validator=_lut_qspec)
    enable_per_channel_scale: bool = field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        gran = self.granularity
        if isinstance(gran, PerGroupedChannelGranularity) and gran.group_size % self.cluster_dim:
            raise ValueError(
                f"cluster_dim: {self.cluster_dim} must divide granularity.group_size {gran.group_size}"
            )

    @property
    def n_clusters(self) -> int:
        """LUT entries per LUT: ``2 ** n_bits``."""
        return 2**self.n_bits

    def describe(self) -> str:
        """Short human label, e.g. ``4-bit`` or ``2-bit g16 cd2 lut:int8 +scale``."""
        parts = [f"{self.n_bits}-bit"]
        if isinstance(self.granularity, PerGroupedChannelGranularity):
            ax = "" if self.granularity.axis == 0 else f"a{self.granularity.axis}"
            parts.append(f"g{self.granularity.group_size}{ax}")
        if self.cluster_dim > 1:
            parts.append(f"cd{self.cluster_dim}")
        if self.lut_qspec is not None:
            parts.append(f"lut:{self.lut_qspec.dtype_name}")
        if self.enable_per_channel_scale:
            parts.append("+scale")
        return " ".join(parts)


def default_weight_palettization_spec() -> PalettizationSpec:
    """4-bit, per-tensor, scalar palettization: the spec every default config uses."""
    return PalettizationSpec(n_bits=4, granularity=PerTensorGranularity(), cluster_dim=1)
