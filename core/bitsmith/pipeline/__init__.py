"""Config-driven compression pipelines: ``bitsmith compress pipeline.yaml`` and :func:`bitsmith.compress`.

A pipeline YAML names the model factory, the calibration data and ordered steps
(palettize, quantize, mixed_precision, export), each selecting its algorithm by
registered name (:mod:`bitsmith.pipeline.config`); :func:`compress` runs it and
returns a :class:`PipelineResult` whose report is written as JSON and as a table
(:mod:`bitsmith.pipeline.report`).
"""

from .config import (
    ExportStep,
    MixedPrecisionStep,
    PalettizeStep,
    PipelineConfig,
    QuantizeStep,
    dump_pipeline,
    load_pipeline,
    validate,
)
from .report import ArtifactReport, PipelineReport, StepReport
from .runner import PipelineResult, compress, run_pipeline

__all__ = ["ArtifactReport", "ExportStep", "MixedPrecisionStep", "PalettizeStep", "PipelineConfig",
           "PipelineReport", "PipelineResult", "QuantizeStep", "StepReport", "compress", "dump_pipeline",
           "load_pipeline", "run_pipeline", "validate"]
