"""Per-layer palettization report: what was compressed, how big, how faithful."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from attrs import asdict, define, field

from ..coverage import Coverage
from ..sizes import TensorSize, dense_size, record_size
from ..table import format_table


@define(frozen=True)
class LayerReport:
    """One compressed tensor: name, shape, spec label, LUT values used, sizes and weight SQNR (dB).

    ``lut_values``: distinct entries of its fullest LUT: ``2**n_bits`` unless the tensor
    (or a channel group) had fewer distinct values, which are then kept exactly.
    """

    name: str
    shape: tuple[int, ...]
    spec: str
    lut_values: int
    kib_before: float
    kib_after: float
    bpw: float
    sqnr_db: float


@define
class PalettizationReport:
    """Rows for every compressed tensor plus model totals; ``str()`` prints a table.

    ``after`` sums the compressed tensors; ``model_total`` every tensor of the model
    after compression (parameters and buffers, shared ones once), so
    :attr:`bpw_model` is the model's bits per weight, compressed or not.
    ``coverage`` lists what stayed uncompressed or had its spec changed, and why.
    """

    layers: list[LayerReport] = field(factory=list)
    before: TensorSize = field(factory=lambda: TensorSize(0, 0))
    after: TensorSize = field(factory=lambda: TensorSize(0, 0))
    model_mib_before: float = 0.0
    model_mib_after: float = 0.0
    model_total: TensorSize = field(factory=lambda: TensorSize(0, 0))
    coverage: Optional[Coverage] = None

    @property
    def bpw_index(self) -> float:
        """Index bits per compressed weight."""
        return self.after.bpw_index

    @property
    def bpw(self) -> float:
        """All-in bits per compressed weight (indices + LUTs + scales)."""
        return self.after.bpw

    @property
    def bpw_model(self) -> float:
        """All-in bits per weight over the whole model (uncompressed tensors at their own dtype)."""
        return self.model_total.bpw

    def totals(self) -> dict[str, float]:
        """Model-level figures."""
        return {"compressed_weights": self.after.numel, "bpw_index": self.bpw_index, "bpw_all_in": self.bpw,
                "compressed_mib_before": self.before.kib / 1024, "compressed_mib_after": self.after.kib / 1024,
                "model_mib_before": self.model_mib_before, "model_mib_after": self.model_mib_after,
                "model_weights": self.model_total.numel, "bpw_model": self.bpw_model}

    def to_dicts(self) -> list[dict[str, Any]]:
        """One plain dict per layer."""
        return [asdict(row) for row in self.layers]

    def __str__(self) -> str:
        rows = [(r.name, "x".join(map(str, r.shape)), r.spec, r.lut_values, r.kib_before, r.kib_after, r.bpw,
                 r.sqnr_db) for r in self.layers]
        table = format_table(["layer", "shape", "spec", "LUT values", "KiB before", "KiB after", "BPW", "SQNR dB"], rows,
                             align="lllrrrrr")
        t = self.totals()
        share = t["compressed_weights"] / t["model_weights"] if t["model_weights"] else 0.0
        text = (f"{table}\n\n{len(self.layers)} tensors, {t['compressed_weights']} weights: "
                f"BPW {t['bpw_index']:.3f} index-only, {t['bpw_all_in']:.3f} all-in; "
                f"whole model ({t['model_weights']} weights, {share:.1%} compressed): BPW {t['bpw_model']:.3f}; "
                f"model {t['model_mib_before']:.2f} MiB -> {t['model_mib_after']:.2f} MiB")
        return text if self.coverage is None else f"{text}\n{self.coverage.summary()}"


_CHUNK = 1 << 22  # elements per step of the report's passes over a tensor


def _flat_chunks(t: torch.Tensor):
    flat = t.detach().reshape(-1)
    return (flat[i:i + _CHUNK] for i in range(0, flat.numel(), _CHUNK))


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact).

    Computed in float32 chunks (sums of chunk norms in float64): one pass, no float64
    copy of either tensor. Compares on the reference's device.
    """
    signal = noise = 0.0
    for ref, app in zip(_flat_chunks(reference), _flat_chunks(approx.to(reference.device))):
        ref = ref.float()
        signal += float(torch.linalg.vector_norm(ref)) ** 2
        noise += float(torch.linalg.vector_norm(ref - app.float())) ** 2
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def lut_values(record: Any) -> int:
    """Distinct entries (rows of ``cluster_dim`` values) in the record's fullest LUT; reads only the LUTs."""
    lut = record.lut.detach()  # (num_luts, k, d)
    k = lut.shape[1]
    earlier = torch.arange(k, device=lut.device)[:, None] > torch.arange(k, device=lut.device)[None, :]
    repeats = ((lut[:, :, None, :] == lut[:, None, :, :]).all(-1) & earlier).any(-1)  # equals an earlier entry
    return int((~repeats).sum(1).max())


def layer_report(name: str, original: torch.Tensor, record: Any, dense: Optional[torch.Tensor] = None) -> LayerReport:
    """Build the report row of one compressed tensor.

    :param original: the tensor's values before compression.
    :param record: its compressed record.
    :param dense: ``record.dequantize()`` if the caller has it already (else computed).
    """
    size = record_size(record)
    dense = record.dequantize() if dense is None else dense
    return LayerReport(name=name, shape=tuple(original.shape), spec=record.spec.describe() if hasattr(
        record.spec, "describe") else str(record.spec), lut_values=lut_values(record),
        kib_before=dense_size(original.shape, original.dtype).kib, kib_after=size.kib, bpw=size.bpw,
        sqnr_db=sqnr_db(original, dense))
