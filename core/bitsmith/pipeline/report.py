"""What a pipeline run did: one row per step, one per artifact; written as JSON and as a text table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from attrs import asdict, define, field

from .. import atomic
from ..table import format_table
from .config import SCHEMA_VERSION


@define
class StepReport:
    """One step: its type and algorithm, time, and the model right after it.

    ``model_mib`` is :func:`bitsmith.sizes.model_size` (every tensor); ``bpw`` and
    ``bpw_index`` are over the compressed weights (all-in / index-only);
    ``output_sqnr_db`` compares the model's output on the first data batch with the
    uncompressed model's (``None`` without data; ``inf`` when identical).
    """

    index: int
    type: str
    name: str
    seconds: float
    model_mib: float
    bpw: float
    bpw_index: float
    compressed_tensors: int
    output_sqnr_db: Optional[float] = None
    detail: str = ""


@define
class ArtifactReport:
    """One written file: step, backend, path, size in bytes and how many times smaller than fp32 it is."""

    step: int
    backend: str
    path: str
    bytes: int
    ratio_vs_fp32: float


@define
class PipelineReport:
    """The whole run; ``str()`` is the human table, :meth:`to_dict` the JSON form."""

    name: str
    fp32_mib: float
    steps: list[StepReport] = field(factory=list)
    artifacts: list[ArtifactReport] = field(factory=list)
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite SQNR as the strings ``"inf"``/``"-inf"``)."""
        data = asdict(self)
        for row in data["steps"]:
            value = row["output_sqnr_db"]
            if isinstance(value, float) and not math.isfinite(value):
                row["output_sqnr_db"] = "inf" if value > 0 else "-inf"
        return data

    def __str__(self) -> str:
        rows = [(s.index, s.type, s.name, s.seconds, f"{s.model_mib:.3f}", s.bpw, s.compressed_tensors,
                 "-" if s.output_sqnr_db is None else s.output_sqnr_db, s.detail) for s in self.steps]
        lines = [f"pipeline {self.name}: fp32 model {self.fp32_mib:.3f} MiB, {self.seconds:.1f} s", "",
                 format_table(["#", "step", "algorithm", "seconds", "MiB", "BPW", "tensors", "SQNR dB", "notes"],
                              rows, align="rllrrrrrl")]
        if self.artifacts:
            arts = [(a.step, a.backend, a.path, a.bytes, f"{a.bytes / 2**20:.3f}", a.ratio_vs_fp32)
                    for a in self.artifacts]
            lines += ["", format_table(["#", "backend", "artifact", "bytes", "MiB", "x smaller"], arts,
                                       align="rllrrr")]
        return "\n".join(lines)

    def write(self, directory: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.txt`` into ``directory`` atomically; returns both paths.

        Existing reports are replaced only with ``overwrite``.
        """
        json_path, text_path = directory / "report.json", directory / "report.txt"
        for path in (json_path, text_path):
            atomic.check_can_write(path, overwrite=overwrite)
        atomic.write_text(json_path, json.dumps(self.to_dict(), indent=2) + "\n", overwrite=overwrite)
        atomic.write_text(text_path, str(self) + "\n", overwrite=overwrite)
        return json_path, text_path


__all__ = ["ArtifactReport", "PipelineReport", "StepReport"]
