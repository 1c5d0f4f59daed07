"""``SKMPalettizer``: sensitive k-means (SqueezeLLM) on top of the core ``Palettizer``.

Usage::

    palettizer = SKMPalettizer(model, config)          # KMeansPalettizerConfig or SKMPalettizerConfig
    palettizer.compute_sensitivity(batches, loss_fn)   # diagonal Fisher, once
    compressed_model = palettizer.prepare()            # weighted k-means per tensor
    exported = palettizer.finalize(backend="torch")

``prepare()`` clusters every tensor with the registered ``"sensitive_kmeans"``
clusterer (the ``"kmeans"`` kernel with the sensitivities as sample weights); layout,
granularity, per-channel scales and LUT quantization are the core's
(:func:`bitsmith.palettization.palettize_tensor`). With ``skm.outlier_fraction`` the
most sensitive weights of each tensor are kept exact as
:class:`bitsmith.compressed.SparseOutliers` on the record (and get zero weight in the
clustering, so the LUT is spent on the others).
"""

from __future__ import annotations

import copy
import logging
import numbers
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import attrs
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import KMeansPalettizerConfig
from bitsmith.devices import DeviceLike, resolve_device, same_device
from bitsmith.errors import CompressionError
from bitsmith.mixed_precision.inputs import weights_device
from bitsmith.palettization import Palettizer
from bitsmith.resolve import ResolvedTensor

from .clusterer import kernel_from
from .config import SKMPalettizerConfig
from .fisher import DEFAULT_TEMPERATURE, META_FILE, LossFn, Sensitivity, compute_fisher, fingerprint, load_sensitivity

logger = logging.getLogger("bitsmith.cache")


class SKMPalettizer(Palettizer):
    """Sensitive k-means palettizer: Fisher-weighted k-means per tensor (SqueezeLLM), optional sparse outliers.

    :param model: the model to compress.
    :param config: an :class:`SKMPalettizerConfig`, a plain ``KMeansPalettizerConfig``
        (wrapped with default SKM options), a dict, a YAML path, or ``None``.
    :param registry: the plugin registry for the clusterers and export backends.
    """

    algorithm = "sensitive_kmeans"
    config_class = SKMPalettizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Any = None):
        if isinstance(config, KMeansPalettizerConfig) and not isinstance(config, SKMPalettizerConfig):
            config = SKMPalettizerConfig.from_kmeans_config(config)
        super().__init__(model, config, registry=registry)
        self.sensitivity: Optional[Sensitivity] = None
        self._outliers: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ calibration

    def compute_sensitivity(self, data: Optional[Iterable[Any]], loss_fn: Optional[LossFn] = None,
                            num_samples: int = 128, sensitivity_path: Union[str, Path, None] = None, *,
                            per_sample: bool = True, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                            recompute: bool = False, progress: Optional[bool] = None,
                            device: DeviceLike = None) -> Sensitivity:
        """Compute (or reload) the per-weight sensitivities of every tensor the config compresses.

        :param data: calibration batches: a DataLoader or a list of batches (see
            :func:`~bitsmith_sensitive_kmeans.fisher.compute_fisher`); may be ``None``
            when ``sensitivity_path`` holds a reusable result.
        :param loss_fn: ``loss_fn(model, batch) -> scalar loss``; ``None`` uses the
            label-free Fisher of the model's own outputs
            (:func:`~bitsmith_sensitive_kmeans.fisher.fisher_loss`).
        :param num_samples: calibration samples (128 is typically enough).
        :param sensitivity_path: directory holding the buffer as a memory-mapped file;
            a complete result computed for the same weights and covering every
            needed tensor is loaded instead of recomputed (unless ``recompute``).
            Its sha256 is checked first: a damaged or edited file is recomputed
            (when ``data`` is given) with a warning on the ``bitsmith.cache`` logger.
        :param per_sample: one backward pass per sample (exact diagonal Fisher) or
            one per batch (fewer passes, coarser).
        :param seed: seed of the default loss's random draws.
        :param temperature: softmax temperature of the default loss on logits
            (default 2; see :mod:`bitsmith_sensitive_kmeans.fisher`).
        :param recompute: ignore a reusable result at ``sensitivity_path``.
        :param device: where the forward/backward passes run (``"cuda"``, ``"cpu"``,
            a ``torch.device``); default: the device of the model's weights. A model
            elsewhere is copied there for this call (``self.model`` is not moved) and
            the batches are moved there; the sensitivities are the same up to float
            rounding and keep fitting ``self.model`` (the fingerprint is device-free).
            A bad or unavailable device fails before any work.
        :returns: the :class:`Sensitivity` (also kept as ``self.sensitivity``).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive integer, got {num_samples!r}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss_fn(model, batch) or None, got {loss_fn!r}")
        target_device = resolve_device(device)
        targets = self.plan()
        if not targets:
            raise CompressionError("the config compresses no tensor of this model; nothing to calibrate")
        kernel_from(self.registry)  # fail before any work if the kmeans kernel is missing
        params = [(t.qualified_name, getattr(t.module, t.tensor_name)) for t in targets]
        if sensitivity_path is not None and not recompute:
            reused = self._reusable(Path(sensitivity_path), params)
            if reused is not None:
                self.sensitivity = reused
                return reused
        if data is None:
            where = f" and {sensitivity_path} holds no reusable result" if sensitivity_path is not None else ""
            raise ValueError(f"data: calibration batches are needed{where}")
        if isinstance(data, torch.Tensor):
            data = [data]
        model = self.model
        if target_device is not None and not same_device(weights_device(model), target_device):
            model = copy.deepcopy(model).to(target_device)
            params = [(t.qualified_name, getattr(model.get_submodule(t.module_name), t.tensor_name)) for t in targets]
        self.sensitivity = compute_fisher(model, params, data, loss_fn, num_samples=num_samples,
                                          per_sample=per_sample, path=sensitivity_path, seed=seed,
                                          temperature=temperature, progress=progress)
        return self.sensitivity

    def _reusable(self, path: Path, params: list[tuple[str, torch.Tensor]]) -> Optional[Sensitivity]:
        """The result saved at ``path`` if it is intact and fits these weights; a damaged one is reported."""
        if not (path / META_FILE).is_file():
            return None
        try:
            saved = load_sensitivity(path)
        except ValueError as exc:
            logger.warning("sensitivity result %s is not usable (%s); recomputing it", path, exc)
            return None
        if any(name not in saved or tuple(saved[name].shape) != tuple(p.shape) for name, p in params):
            return None
        named = dict(self.model.named_parameters(remove_duplicate=False))
        if any(name not in named for name in saved.names()):
            return None
        if fingerprint([(name, named[name]) for name in saved.names()]) != saved.fingerprint:
            return None  # written for other weights
        return saved

    def use_sensitivity(self, sensitivity: Sensitivity) -> "SKMPalettizer":
        """Use sensitivities computed elsewhere (e.g. by another palettizer on the same model); returns ``self``."""
        targets = self.plan()
        missing = [t.qualified_name for t in targets if t.qualified_name not in sensitivity]
        if missing:
            raise CompressionError(f"sensitivity has no values for {', '.join(missing)}")
        self.sensitivity = sensitivity
        return self

    # ------------------------------------------------------------------ clustering

    def clusterer(self) -> Any:
        """The registered ``"sensitive_kmeans"`` clusterer bound to this registry's ``"kmeans"`` kernel."""
        registered = self.registry.get("cluster", self.algorithm)
        bind = getattr(registered, "with_kernel", None)
        return bind(kernel_from(self.registry)) if bind is not None else registered

    def sample_weight(self, item: ResolvedTensor) -> Optional[torch.Tensor]:
        """The tensor's sensitivities to the power ``skm.sensitivity_power``, its outliers (if any) set to zero.

        With power 1 and no outliers this is a view of the sensitivity buffer (no copy).
        """
        if self.sensitivity is None:
            raise CompressionError("no sensitivity: call compute_sensitivity(data, loss_fn) first")
        sens = self.sensitivity[item.qualified_name].detach()
        options = self.config.skm
        nnz = int(round(options.outlier_fraction * sens.numel()))
        weights = sens if options.sensitivity_power == 1 else sens.float().pow(options.sensitivity_power)
        if nnz == 0:
            self._outliers.pop(item.qualified_name, None)
            return weights
        index = torch.topk(sens.reshape(-1).float().cpu(), nnz, sorted=False).indices.sort().values
        self._outliers[item.qualified_name] = index
        weights = weights.reshape(-1).float().cpu().clone() if weights is sens else weights.reshape(-1).cpu()
        weights[index] = 0
        return weights.reshape(sens.shape)

    def finish_record(self, item: ResolvedTensor, record: compressed.PalettizedTensor) -> compressed.PalettizedTensor:
        """Attach the tensor's sparse outliers (exact original values) to its record."""
        index = self._outliers.get(item.qualified_name)
        if index is None:
            return record
        values = getattr(item.module, item.tensor_name).detach().reshape(-1)[index.to(
            getattr(item.module, item.tensor_name).device)].to(record.dtype).cpu().clone()
        return attrs.evolve(record, outliers=compressed.SparseOutliers(index.to(torch.int64), values))

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module:
        """Cluster every tensor with its sensitivities and return the model with palettized weights in effect.

        Without a prior :meth:`compute_sensitivity`, ``example_inputs`` is taken as
        calibration data (a tensor batch, or an iterable of batches) and the default
        label-free loss is used. Keyword arguments as in ``Palettizer.prepare``.
        """
        if self.sensitivity is None:
            if example_inputs is None:
                raise CompressionError("SKMPalettizer.prepare() needs sensitivities: call "
                                       "compute_sensitivity(data, loss_fn) first, or pass calibration batches "
                                       "as example_inputs")
            self.compute_sensitivity(example_inputs)
        missing = [t.qualified_name for t in self.plan() if t.qualified_name not in self.sensitivity]
        if missing:
            raise CompressionError(f"sensitivity has no values for {', '.join(missing)}; recompute it for this config")
        return super().prepare(example_inputs, **kwargs)
