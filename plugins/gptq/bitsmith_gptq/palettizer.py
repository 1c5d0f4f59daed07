"""``GPTQPalettizer``: k-means LUTs, then GPTQ-style index assignment from calibration activations.

Usage::

    palettizer = GPTQPalettizer(model, KMeansPalettizerConfig.presets.w4())
    palettizer.calibrate(calibration_batches)       # E[x x^T] of every compressed layer's input
    compressed_model = palettizer.prepare()

or as a mixed-precision candidate (``"4-bit +scale @gptq"``): the sensitivity stage
calibrates it with its ``calibration_data`` (``compute_sensitivity`` is this class's
``calibrate`` under the name that stage calls).

Per tensor: the registered ``"kmeans"`` clusterer builds the LUT(s) and the per-channel
scales as :class:`KMeansPalettizer` would (same spec, same size), with each weight
weighted by its input column's energy ``H_jj`` (:meth:`GPTQPalettizer.sample_weight`;
``weighted_luts=False`` gives plain k-means LUTs); then
:func:`~bitsmith_gptq.assign.assign_indices` re-chooses the indices so the layer's
*output* error on the calibration inputs is small, and, with
``enable_per_channel_scale``, each channel's scale is refitted to that output
(:func:`~bitsmith_gptq.assign.refit_scales`). Layers GPTQ does not cover (embeddings,
3-D convolutions, vector palettization, LUTs grouped along the input axis, records
with sparse outliers) keep their k-means record; :attr:`GPTQPalettizer.skipped`
says which and why.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Union

import attrs
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import KMeansPalettizerConfig
from bitsmith.errors import CompressionError
from bitsmith.palettization import Palettizer
from bitsmith.resolve import ResolvedTensor

from .assign import assign_indices, inverse_hessian_factor, refit_scales
from .config import GPTQPalettizerConfig
from .stats import InputStats, collect_input_stats, layer_layout


class GPTQPalettizer(Palettizer):
    """Palettizer choosing LUT indices with GPTQ error compensation (LUTs from the ``"kmeans"`` clusterer).

    :param model: the model to compress.
    :param config: a :class:`~bitsmith_gptq.config.GPTQPalettizerConfig` or a plain ``KMeansPalettizerConfig``
        (wrapped with default options); dict, YAML path or ``None`` as for k-means. Keyword options
        given here override the config's ``gptq`` options.
    :param registry: plugin registry (for the ``"kmeans"`` clusterer and export backends).
    :param damp: Hessian damping, as a fraction of the mean input second moment (default 0.01).
    :param shrinkage: pull ``H`` toward ``mean(diag H) * I`` by this fraction before
        damping. ``"auto"`` (default) uses ``D / (D + sqrt(n * m))`` for ``D`` columns,
        ``n`` calibration input vectors and ``m`` calibration samples: the vectors of
        one sample (a convolution's positions, a sequence's tokens) are strongly
        correlated, so the effective number of independent vectors lies between ``m``
        and ``n``. A layer that saw few independent inputs for its size (a classifier
        on pooled features: one vector per image) is thus not fitted to them (its
        indices tend to nearest-value rounding); ``0`` disables shrinkage.
    :param act_order: process columns by decreasing input second moment (default ``True``).
    :param refit_scales: refit per-channel scales to the output (default ``True``; only
        for specs with ``enable_per_channel_scale``).
    :param block_size: columns per GPTQ block (speed only).
    :param weighted_luts: fit the LUTs by k-means weighted by each weight's share of the
        layer's output error, ``H_jj`` of its input column (times its channel's squared
        scale with ``enable_per_channel_scale``), instead of unweighted k-means
        (default ``True``; entries then sit where the inputs are large).
    """

    algorithm = "gptq"
    config_class = GPTQPalettizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Any = None, damp: Optional[float] = None,
                 shrinkage: Union[str, float, None] = None, act_order: Optional[bool] = None,
                 refit_scales: Optional[bool] = None, block_size: Optional[int] = None,
                 weighted_luts: Optional[bool] = None):
        if isinstance(config, KMeansPalettizerConfig) and not isinstance(config, GPTQPalettizerConfig):
            config = GPTQPalettizerConfig.from_specs(config)
        super().__init__(model, config, registry=registry)
        given = {"damp": damp, "shrinkage": shrinkage, "act_order": act_order, "refit_scales": refit_scales,
                 "block_size": block_size, "weighted_luts": weighted_luts}
        options = attrs.evolve(self.config.gptq, **{k: v for k, v in given.items() if v is not None})
        self.damp, self.act_order, self.refit, self.block_size = (float(options.damp), options.act_order,
                                                                  options.refit_scales, options.block_size)
        self.weighted_luts = options.weighted_luts
        self.shrinkage = options.shrinkage if options.shrinkage == "auto" else float(options.shrinkage)
        self.sensitivity: Optional[InputStats] = None
        self.skipped: dict[str, str] = {}

    # ------------------------------------------------------------------ calibration

    def calibrate(self, data: Iterable[Any], num_samples: Optional[int] = None) -> InputStats:
        """Collect ``E[x x^T]`` of the input of every layer the config compresses; returns (and keeps) it.

        :param data: calibration batches (a tensor batch, or an iterable of tensors,
            tuples of positional inputs or dicts of keyword inputs).
        :param num_samples: use at most this many samples (default: all).
        """
        if data is None:
            raise ValueError("data: calibration batches are needed")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise ValueError(f"num_samples: expected a positive integer or None, got {num_samples!r}")
        targets = self.plan()
        if not targets:
            raise CompressionError("the config compresses no tensor of this model; nothing to calibrate")
        self.clusterer()  # fail before any work if the kmeans clusterer is missing
        if isinstance(data, (torch.Tensor, dict, tuple)):
            data = [data]
        layers = [(t.qualified_name, t.module) for t in targets if t.tensor_name == "weight"]
        self.sensitivity = collect_input_stats(self.model, layers, data, num_samples)
        if self.sensitivity.samples == 0:
            raise ValueError("data: no calibration batch was given")
        return self.sensitivity

    def compute_sensitivity(self, data: Iterable[Any], num_samples: Optional[int] = None) -> InputStats:
        """Same as :meth:`calibrate` (the name the mixed-precision sensitivity stage calls)."""
        return self.calibrate(data, num_samples)

    # ------------------------------------------------------------------ clustering

    def clusterer(self) -> Any:
        """The registered ``"kmeans"`` clusterer (it builds the LUTs; GPTQ only re-chooses indices)."""
        return self.registry.get("cluster", "kmeans")

    def sample_weight(self, item: ResolvedTensor) -> Optional[torch.Tensor]:
        """k-means sample weights of a layer's weight: ``H_jj`` of each weight's input column.

        A weight's rounding error ``e`` adds about ``H_jj e^2`` to the layer's output
        error (``s^2 H_jj e^2`` after a per-channel scale ``s``), so the LUT is fitted
        where it matters for the output. ``None`` (unweighted) when
        ``weighted_luts=False`` or the layer has no calibration statistics or layout.
        """
        name = item.qualified_name
        if (not self.weighted_luts or self.sensitivity is None or name not in self.sensitivity
                or item.tensor_name != "weight" or layer_layout(item.module) is None):
            return None
        weight = getattr(item.module, item.tensor_name).detach().to("cpu", torch.float64)
        layout = layer_layout(item.module)
        hessian = self._shrunk(self.sensitivity.hessian(name), self.sensitivity.counts[name],
                               self.sensitivity.samples)
        diag = hessian.diagonal(dim1=1, dim2=2).clamp_min(0)
        diag = diag + 1e-3 * diag.mean().clamp_min(1e-30)  # columns no input reaches still count a little
        importance = diag[:, None, :].expand(layout.groups, layout.rows, layout.columns).reshape(weight.shape)
        if item.spec.enable_per_channel_scale:  # the scale palettize_tensor divides by (1 for a zero row)
            scale = weight.reshape(weight.shape[0], -1).abs().amax(dim=1)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            importance = importance * scale.pow(2).reshape(-1, *([1] * (weight.dim() - 1)))
        return importance.clamp_min(importance.max() * 1e-6).float()  # no weight vanishes in float32

    def finish_record(self, item: ResolvedTensor, record: compressed.PalettizedTensor) -> compressed.PalettizedTensor:
        """Re-choose the record's indices (and refit its scales) for the layer's output."""
        if self.sensitivity is None:
            raise CompressionError("GPTQPalettizer needs calibration: call calibrate(data) first (or pass "
                                   "calibration batches to prepare())")
        name = item.qualified_name
        reason = self._unsupported(item, record)
        if reason is not None:
            self.skipped[name] = reason
            return record
        self.skipped.pop(name, None)
        layout = layer_layout(item.module)
        weight = getattr(item.module, item.tensor_name).detach().float()  # on its own device, in float32
        device = weight.device
        rows = weight.reshape(weight.shape[0], -1)
        scale = None if record.per_channel_scale is None else record.per_channel_scale.detach().to(device,
                                                                                                    torch.float32)
        normalized = rows if scale is None else rows / scale[:, None]
        lut = record.lut.detach().to(device, torch.float32)[:, :, 0]  # (n_luts, K)
        lut_of_row = torch.arange(rows.shape[0], device=device) // record.group_size
        g, r, d = layout.groups, layout.rows, layout.columns
        hessian = self._shrunk(self.sensitivity.hessian(name), self.sensitivity.counts[name],
                               self.sensitivity.samples)
        order = None
        if self.act_order:
            order = torch.argsort(hessian.diagonal(dim1=1, dim2=2), dim=1, descending=True)
            permuted = torch.gather(hessian, 1, order.unsqueeze(-1).expand(g, d, d))
            permuted = torch.gather(permuted, 2, order.unsqueeze(1).expand(g, d, d))
        else:
            permuted = hessian
        factor = inverse_hessian_factor(permuted, self.damp)
        luts = lut[lut_of_row].reshape(g, r, -1)
        index = assign_indices(normalized.reshape(g, r, d), luts, factor, order, self.block_size)
        chosen = torch.gather(luts, 2, index).reshape(rows.shape)
        new_scale = record.per_channel_scale
        if scale is not None and self.refit:
            fitted = refit_scales(rows.reshape(g, r, d), chosen.reshape(g, r, d), hessian, scale.reshape(g, r))
            new_scale = fitted.reshape(-1).to(record.per_channel_scale)
        indices = index.reshape(record.indices.shape).to(record.indices.device, record.indices.dtype)
        return attrs.evolve(record, indices=indices.contiguous(), per_channel_scale=new_scale)

    def _shrunk(self, hessian: torch.Tensor, vectors: int, samples: int) -> torch.Tensor:
        """``(1 - a) H + a * mean(diag H) * I`` per group (``a`` from :attr:`shrinkage`)."""
        d = hessian.shape[-1]
        alpha = d / (d + math.sqrt(vectors * max(1, samples))) if self.shrinkage == "auto" else self.shrinkage
        if alpha == 0:
            return hessian
        mean = hessian.diagonal(dim1=1, dim2=2).mean(dim=1)
        eye = torch.eye(d, dtype=hessian.dtype, device=hessian.device)
        return (1 - alpha) * hessian + alpha * mean[:, None, None] * eye

    def _unsupported(self, item: ResolvedTensor, record: compressed.PalettizedTensor) -> Optional[str]:
        if item.tensor_name != "weight" or layer_layout(item.module) is None:
            return f"{type(item.module).__name__}.{item.tensor_name}: no GPTQ layout (kept k-means indices)"
        if item.qualified_name not in self.sensitivity:
            return "no calibration statistics (the layer never ran on the calibration data)"
        if record.cluster_dim != 1:
            return "vector palettization (cluster_dim > 1) is not supported"
        if record.axis != 0:
            return "LUTs grouped along the input axis are not supported"
        if record.outliers is not None:
            return "records with sparse outliers are not supported"
        return None

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module:
        """Cluster, re-assign indices and return the model with palettized weights in effect.

        Without a prior :meth:`calibrate`, ``example_inputs`` is taken as calibration
        data. Keyword arguments as in ``Palettizer.prepare``.
        """
        if self.sensitivity is None:
            if example_inputs is None:
                raise CompressionError("GPTQPalettizer.prepare() needs calibration: call calibrate(data) first, "
                                       "or pass calibration batches as example_inputs")
            self.calibrate(example_inputs)
        return super().prepare(example_inputs, **kwargs)
