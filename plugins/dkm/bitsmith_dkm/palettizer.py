"""``DKMPalettizer``: differentiable k-means palettization during fine-tuning.

Usage::

    palettizer = DKMPalettizer(model, config)   # DKMPalettizerConfig or KMeansPalettizerConfig
    model = palettizer.prepare()                # trainable: DKM parametrizations on every target weight
    model.train()
    for x, y in loader:                         # your training loop
        loss = criterion(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()
    exported = palettizer.finalize(backend="torch")   # snap to hard assignment, attach records, export

``prepare()`` initialises each tensor's centroids with a registered clusterer
(``dkm.init_clusterer``, the exact ``"kmeans"`` by default) and registers a
:class:`~bitsmith_dkm.DKMParametrization` on it. The weight and the centroids are
parameters the optimizer trains; in ``eval()`` the model already computes with the
snapped weights the export will contain. ``snap()`` (called by ``finalize()``)
replaces every parametrization by the plain snapped weight plus a
:class:`bitsmith.compressed.PalettizedTensor` record, so every export backend works.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
from typing import Any, Optional, Union

from torch import nn
from torch.nn.utils import parametrize

from bitsmith import compressed
from bitsmith.config import KMeansPalettizerConfig
from bitsmith.devices import DeviceLike, resolve_device
from bitsmith.errors import CompressionError, PluginError
from bitsmith.export import ExportBackend
from bitsmith.palettization import Palettizer
from bitsmith.palettization.report import PalettizationReport, layer_report
from bitsmith.sizes import TensorSize, dense_size, model_size

from .config import DKMPalettizerConfig
from .parametrization import DKMParametrization


class DKMPalettizer(Palettizer):
    """Training-time palettizer: differentiable k-means (Cho et al., DKM) on every target tensor.

    :param model: the model to fine-tune and compress.
    :param config: a :class:`DKMPalettizerConfig`, a plain ``KMeansPalettizerConfig``
        (wrapped with default DKM options), a dict, a YAML path, or ``None``.
    :param registry: the plugin registry for the init clusterer and export backends.
    """

    algorithm = "dkm"
    config_class = DKMPalettizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Any = None):
        if isinstance(config, KMeansPalettizerConfig) and not isinstance(config, DKMPalettizerConfig):
            config = DKMPalettizerConfig.from_kmeans_config(config)
        super().__init__(model, config, registry=registry)
        self._targets: list[tuple[str, nn.Module, str]] = []

    def clusterer(self) -> Any:
        """The clusterer that initialises the centroids (``dkm.init_clusterer``)."""
        name = self.config.dkm.init_clusterer
        try:
            return self.registry.get("cluster", name)
        except PluginError as exc:
            raise PluginError(f"dkm.init_clusterer: DKM initialises its centroids with the clusterer {name!r}, "
                              f"which is not available (install bitsmith-kmeans for 'kmeans', or set "
                              f"dkm.init_clusterer: dkm)\n{exc}") from None

    def prepare(self, example_inputs: Any = None, *, inplace: bool = False, num_workers: int = 1,
                executor: Optional[cf.Executor] = None, progress: Optional[bool] = None,
                seed: Optional[int] = None, device: DeviceLike = None) -> nn.Module:
        """Return the trainable model: DKM parametrizations on every target tensor, centroids initialised.

        :param example_inputs: unused (API symmetry).
        :param inplace: modify ``self.model`` instead of a deep copy.
        :param device: where the returned model lives and DKM trains (``"cuda"``,
            ``"cpu"``, a ``torch.device``); default: where the weights already are.
            The copy (or, with ``inplace``, ``self.model`` itself) is moved there
            before anything is clustered. Each parametrization, its centroids and its
            soft assignment sit on its weight's device; the initial centroids come
            from the init clusterer (the exact ``"kmeans"`` runs on the CPU) and are
            moved there. A bad or unavailable device fails before any work.
        :param num_workers: / :param executor: / :param progress: parallelism and progress
            of the centroid initialisation, as in ``Palettizer.prepare``.
        :param seed: seed of a randomized init clusterer.
        """
        target_device = resolve_device(device)
        clusterer = self.clusterer()  # fail before copying the model if it is missing
        model = self.model if inplace else copy.deepcopy(self.model)
        if target_device is not None:
            model.to(target_device)
        targets = self.plan(model)
        _check_targets(model, targets)
        records = self.cluster_targets(targets, clusterer, num_workers=num_workers, executor=executor,
                                       progress=progress, seed=seed)
        self._targets = []
        for target, record in zip(targets, records):
            weight = getattr(target.module, target.tensor_name)
            param = DKMParametrization(target.spec, tuple(weight.shape), record.lut, self.config.dkm).to(weight.device)
            # unsafe: the shape/dtype check would run one full soft forward pass (the layout guarantees both)
            parametrize.register_parametrization(target.module, target.tensor_name, param, unsafe=True)
            self._targets.append((target.qualified_name, target.module, target.tensor_name))
        self.prepared_model = model
        self._report = None
        return model

    def snap(self) -> nn.Module:
        """Snap every DKM tensor to its nearest centroid: plain weight + ``PalettizedTensor`` record.

        Removes the parametrizations (the weight parameter object is kept, so an
        optimizer holding it stays valid), attaches the records, builds the report
        and returns the prepared model, which no longer trains DKM. Idempotent.
        """
        if self.prepared_model is None:
            raise RuntimeError("snap() needs a prepared model: call prepare() first")
        if self._report is not None:
            return self.prepared_model
        rows, before_bits = [], 0
        for name, module, tensor_name in self._targets:
            param = module.parametrizations[tensor_name][0]
            original = module.parametrizations[tensor_name].original
            record = param.record(original.detach())
            weight = original.detach().to("cpu", copy=True)  # records live on the CPU; so does the report
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
            compressed.apply(module, tensor_name, record)
            rows.append(layer_report(name, weight, record))
            before_bits += dense_size(weight.shape, weight.dtype).total_bits
        after = model_size(self.prepared_model)
        self._report = PalettizationReport(
            layers=rows, before=TensorSize(after.compressed.numel, before_bits), after=after.compressed,
            model_mib_before=(after.uncompressed.total_bits + before_bits) / 8 / 2**20, model_mib_after=after.mib)
        return self.prepared_model

    def finalize(self, backend: Union[str, ExportBackend] = ExportBackend.CoreAI, *, inplace: bool = False) -> nn.Module:
        """Snap (:meth:`snap`) and export the model with a registered backend."""
        self.snap()
        return super().finalize(backend, inplace=inplace)

    def report(self) -> PalettizationReport:
        """Per-layer table of the snapped model (after :meth:`snap` or :meth:`finalize`)."""
        if self._report is None:
            raise RuntimeError("report() describes the snapped model: call finalize() or snap() after training")
        return self._report


def _check_targets(model: nn.Module, targets: list) -> None:
    """DKM needs one owner per tensor and no existing parametrization on it."""
    for target in targets:
        if parametrize.is_parametrized(target.module, target.tensor_name):
            raise CompressionError(f"{target.qualified_name}: already parametrized; DKM needs a plain weight")
        tensor = getattr(target.module, target.tensor_name)
        owners = [f"{n}.{p}" if n else p for n, m in model.named_modules(remove_duplicate=False)
                  for p, t in m.named_parameters(recurse=False) if t is tensor]
        if len(owners) > 1:
            raise CompressionError(f"{target.qualified_name}: shared by {', '.join(owners)}; DKM cannot train a "
                                   f"tied tensor; leave all but one owner uncompressed (set their spec to None) "
                                   f"or untie them")
