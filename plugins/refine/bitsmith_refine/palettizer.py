"""``RefinePalettizer``: k-means palettization, then :func:`~bitsmith_refine.refine.refine` on calibration data."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from bitsmith.config import KMeansPalettizerConfig
from bitsmith.errors import CompressionError
from bitsmith.palettization import Palettizer

from .config import RefinePalettizerConfig
from .refine import RefineOptions, RefineResult, refine


class RefinePalettizer(Palettizer):
    """k-means palettization (the registered ``"kmeans"`` clusterer) whose LUTs and scales are then
    fitted to the uncompressed model's outputs on calibration batches (indices and size unchanged).

    :param model: the model to compress.
    :param config: a :class:`~bitsmith_refine.config.RefinePalettizerConfig` or a plain
        ``KMeansPalettizerConfig`` (default refinement options); dict, YAML path or ``None``
        as for k-means.
    :param registry: plugin registry.
    :param options: :class:`~bitsmith_refine.refine.RefineOptions` (training steps, loss, ...);
        given, they replace the config's ``refine`` options.
    """

    algorithm = "kmeans"
    config_class = RefinePalettizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Any = None,
                 options: Optional[RefineOptions] = None):
        if options is not None and not isinstance(options, RefineOptions):
            raise TypeError(f"options: expected RefineOptions, got {type(options).__name__}")
        if isinstance(config, KMeansPalettizerConfig) and not isinstance(config, RefinePalettizerConfig):
            config = RefinePalettizerConfig.from_specs(config)
        super().__init__(model, config, registry=registry)
        self.options = self.config.refine if options is None else options
        self.result: Optional[RefineResult] = None

    def prepare(self, example_inputs: Any = None, **kwargs: Any) -> nn.Module:
        """Palettize, then refine on ``example_inputs`` (calibration batches: a list of batches or one batch).

        Keyword arguments as in ``Palettizer.prepare``; the refinement's outcome and
        cost are kept in :attr:`result`.
        """
        if example_inputs is None:
            raise CompressionError("RefinePalettizer.prepare() needs calibration batches as example_inputs")
        batches = example_inputs if isinstance(example_inputs, list) else [example_inputs]
        prepared = super().prepare(example_inputs, **kwargs)
        self.result = refine(prepared, self.model, batches, options=self.options, inplace=True)
        return prepared
