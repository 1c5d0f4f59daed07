"""Stages 2 and 3 of mixed precision: pick one candidate per layer for a budget, then apply it.

:func:`generate_recipe` turns a :class:`SensitivityTable` and a target — bits per
weight (all-in: indices + LUTs + scales, over the table's layers) or a model size
in MiB (everything, uncompressed tensors included) — into a bit budget, builds the
multiple-choice knapsack (:class:`bitsmith.protocols.RecipeProblem`: per layer the
candidates' all-in bits and additive distortions) and hands it to a registered
recipe search (``"greedy"``, ``"optimal"``, ...).

A :class:`Recipe` knows its realized BPW (index-only and all-in), its size and its
predicted score; ``to_config()`` gives the ``KMeansPalettizerConfig`` that
reproduces it (``module_name_configs``, ``global_config=None``); it saves and loads
as YAML or JSON with a schema version. :func:`apply_recipe` compresses a model with
it, reusing the records clustered during the sensitivity stage when given.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml
from attrs import define, field
from torch import nn

from .. import atomic, compressed, plugins, safe_yaml
from ..config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, PalettizationSpec, from_dict, to_dict
from ..errors import CompressionError, ConfigError
from ..palettization.apply import palettize, split_by_algorithm, transplant_record
from ..protocols import InvertibleMetric, RecipeProblem
from ..table import format_number, format_table
from .table import SensitivityTable, decode_float, encode_float, rows_by_layer

__all__ = ["RECIPE_SCHEMA_VERSION", "Recipe", "RecipeLayer", "apply_recipe", "generate_recipe"]

RECIPE_SCHEMA_VERSION = 1
"""Version of the saved recipe format."""

RECIPE_KEY = "bitsmith_recipe"
"""Top-level key of recipe YAML/JSON documents."""


@define(frozen=True)
class RecipeLayer:
    """The candidate chosen for one layer, with its all-in and index bits and its sensitivity."""

    layer: str
    tensor: str
    candidate: str
    spec: PalettizationSpec
    palettizer: str
    numel: int
    bits: int
    index_bits: int
    score: float
    distortion: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/YAML-safe)."""
        return {"tensor": self.tensor, "candidate": self.candidate, "palettizer": self.palettizer,
                "spec": to_dict(self.spec), "numel": self.numel, "bits": self.bits, "index_bits": self.index_bits,
                "score": encode_float(self.score), "distortion": encode_float(self.distortion)}

    @classmethod
    def from_dict(cls, layer: str, data: Mapping[str, Any]) -> "RecipeLayer":
        """Inverse of :meth:`to_dict`."""
        try:
            spec = from_dict(data["spec"], PalettizationSpec)
        except ConfigError as exc:
            raise ConfigError([f"layers.{layer}.spec.{line}" for line in exc.lines]) from None
        return cls(layer=layer, tensor=str(data["tensor"]), candidate=str(data["candidate"]), spec=spec,
                   palettizer=str(data["palettizer"]), numel=int(data["numel"]), bits=int(data["bits"]),
                   index_bits=int(data["index_bits"]), score=decode_float(data["score"]),
                   distortion=decode_float(data["distortion"]))


@define
class Recipe:
    """A per-layer assignment of candidates, with what it costs and what it is predicted to score.

    :param layers: one entry per compressed layer, in model order.
    :param uncompressed_bits: bits of every other model tensor (unchanged by the recipe).
    :param predicted_score: the metric's prediction for the whole recipe (from the
        summed distortion, when the metric offers ``from_distortion``), else ``None``.
    """

    layers: list[RecipeLayer]
    metric: str
    unit: str
    higher_is_better: bool
    search: str
    target_bpw: Optional[float] = None
    target_size_mib: Optional[float] = None
    budget_bits: float = 0.0
    uncompressed_bits: int = 0
    predicted_distortion: float = 0.0
    predicted_score: Optional[float] = None
    meta: dict[str, Any] = field(factory=dict)

    # ------------------------------------------------------------------ figures

    @property
    def numel(self) -> int:
        """Weights compressed by the recipe."""
        return sum(entry.numel for entry in self.layers)

    @property
    def bits(self) -> int:
        """All-in bits of the compressed weights."""
        return sum(entry.bits for entry in self.layers)

    @property
    def bpw(self) -> float:
        """All-in bits per compressed weight (indices + LUTs + scales)."""
        return self.bits / self.numel if self.numel else 0.0

    @property
    def bpw_index(self) -> float:
        """Index bits per compressed weight."""
        return sum(entry.index_bits for entry in self.layers) / self.numel if self.numel else 0.0

    @property
    def size_mib(self) -> float:
        """Whole model size in MiB: compressed weights plus every uncompressed tensor."""
        return (self.bits + self.uncompressed_bits) / 8 / 2**20

    @property
    def compressed_mib(self) -> float:
        """Size of the compressed weights alone, in MiB."""
        return self.bits / 8 / 2**20

    def layer(self, name: str) -> RecipeLayer:
        """The entry of layer ``name``."""
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise KeyError(f"layer {name!r} is not in the recipe")

    def distribution(self) -> dict[str, list[str]]:
        """Layers per candidate label, candidates ordered by their average all-in BPW (highest first)."""
        groups: dict[str, list[RecipeLayer]] = {}
        for entry in self.layers:
            groups.setdefault(entry.candidate, []).append(entry)

        def bpw(label: str) -> float:
            entries = groups[label]
            return sum(e.bits for e in entries) / sum(e.numel for e in entries)

        return {label: [e.layer for e in groups[label]] for label in sorted(groups, key=lambda c: -bpw(c))}

    def summary(self, max_names: int = 6) -> str:
        """The bit distribution, like seed 000: ``2 layers at 6-bit: conv1, ...``, then the totals."""
        lines = []
        for label, names in self.distribution().items():
            shown = ", ".join(names[:max_names]) + (f", ... (+{len(names) - max_names})" if len(names) > max_names
                                                     else "")
            lines.append(f"{len(names):4d} layer{'s' if len(names) != 1 else ' '} at {label}: {shown}")
        target = (f"target {self.target_bpw:g} BPW" if self.target_bpw is not None
                  else f"target {self.target_size_mib:g} MiB")
        pred = "" if self.predicted_score is None else (
            f", predicted {self.metric.upper()} {format_number(self.predicted_score)}{(' ' + self.unit) if self.unit else ''}")
        lines.append(f"{self.search} recipe, {target}: {len(self.layers)} layers, BPW {self.bpw_index:.3f} index-only, "
                     f"{self.bpw:.3f} all-in; {self.size_mib:.2f} MiB{pred}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def table(self) -> str:
        """One row per layer: candidate, KiB, BPW, score."""
        rows = [(e.layer, e.candidate, e.bits / 8 / 1024, e.bits / e.numel, e.score) for e in self.layers]
        return format_table(["Layer", "Config", "Size (KiB)", "BPW", f"{self.metric.upper()}"], rows, align="llrrr")

    # ------------------------------------------------------------------ configs

    def to_config(self) -> KMeansPalettizerConfig:
        """The config that reproduces the recipe: one ``module_name_configs`` entry per layer, ``global_config=None``.

        Each entry names its layer's algorithm (``algorithm: gptq``), so
        ``bitsmith.palettization.palettize(model, recipe.to_config(), calibration_data)``
        gives the model :func:`apply_recipe` gives (bit for bit, with the same
        calibration data); with one algorithm, that palettizer class applies it too.
        """
        return _config(self.layers)

    def to_configs(self) -> dict[str, KMeansPalettizerConfig]:
        """One plain (specs only) config per palettizer name (``{"kmeans": ..., "sensitive_kmeans": ...}``)."""
        return {part.algorithm: part.config for part in split_by_algorithm(self.to_config())}

    # ------------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form under the ``bitsmith_recipe`` key, with ``schema_version``."""
        body = {"schema_version": RECIPE_SCHEMA_VERSION, "metric": self.metric, "unit": self.unit,
                "higher_is_better": self.higher_is_better, "search": self.search, "target_bpw": self.target_bpw,
                "target_size_mib": self.target_size_mib, "budget_bits": self.budget_bits,
                "uncompressed_bits": self.uncompressed_bits,
                "predicted_distortion": encode_float(self.predicted_distortion),
                "predicted_score": None if self.predicted_score is None else encode_float(self.predicted_score),
                "summary": {"bpw_index": round(self.bpw_index, 6), "bpw": round(self.bpw, 6),
                            "size_mib": round(self.size_mib, 6)},
                "meta": json.loads(json.dumps(self.meta, default=str)),
                "layers": {entry.layer: entry.to_dict() for entry in self.layers}}
        return {RECIPE_KEY: body}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "recipe") -> "Recipe":
        """Inverse of :meth:`to_dict`; errors name the file and field."""
        if not isinstance(data, Mapping) or RECIPE_KEY not in data:
            raise ConfigError(f"{source}: not a bitsmith recipe (top-level key {RECIPE_KEY!r} missing)")
        body = data[RECIPE_KEY]
        version = body.get("schema_version") if isinstance(body, Mapping) else None
        if not isinstance(version, int) or not 1 <= version <= RECIPE_SCHEMA_VERSION:
            raise ConfigError(f"{source}: {RECIPE_KEY}.schema_version {version!r} is not supported (this bitsmith "
                              f"reads 1..{RECIPE_SCHEMA_VERSION})")
        try:
            layers = [RecipeLayer.from_dict(name, entry) for name, entry in body["layers"].items()]
            score = body.get("predicted_score")
            return cls(layers=layers, metric=body["metric"], unit=body["unit"],
                       higher_is_better=bool(body["higher_is_better"]), search=body["search"],
                       target_bpw=body.get("target_bpw"), target_size_mib=body.get("target_size_mib"),
                       budget_bits=float(body["budget_bits"]), uncompressed_bits=int(body["uncompressed_bits"]),
                       predicted_distortion=decode_float(body["predicted_distortion"]),
                       predicted_score=None if score is None else decode_float(score),
                       meta=dict(body.get("meta") or {}))
        except ConfigError as exc:
            raise ConfigError([f"{source}: {RECIPE_KEY}.{line}" for line in exc.lines]) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: malformed recipe ({type(exc).__name__}: {exc})") from None

    def save(self, path: Union[str, Path], *, overwrite: bool = False) -> Path:
        """Write ``.yaml``/``.yml`` or ``.json`` (by extension) atomically; returns the path.

        An existing file is replaced only with ``overwrite=True`` (:mod:`bitsmith.atomic`).
        """
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        elif path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1) + "\n"
        else:
            raise ValueError(f"{path}: save a recipe as .yaml, .yml or .json")
        return atomic.write_text(path, text, overwrite=overwrite)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Recipe":
        """Read a recipe written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe file")
        data = safe_yaml.load_file(path)  # JSON is YAML
        return cls.from_dict(data, source=str(path))


def _config(entries: list[RecipeLayer]) -> KMeansPalettizerConfig:
    return KMeansPalettizerConfig(global_config=None, module_name_configs={
        e.layer: ModuleKMeansPalettizerConfig(op_state_spec={e.tensor: e.spec}, algorithm=e.palettizer)
        for e in entries})


# ---------------------------------------------------------------------- generate


def generate_recipe(table: SensitivityTable, target_bpw: Optional[float] = None, target_size: Optional[float] = None,
                    search: str = "greedy", *, registry: Optional[plugins.Registry] = None) -> Recipe:
    """Choose one candidate per layer of ``table`` within a budget, with a registered recipe search.

    :param target_bpw: all-in bits per weight over the table's layers (indices +
        LUTs + scales): the budget is ``target_bpw * total weights`` bits.
    :param target_size: whole-model size in MiB (uncompressed tensors included).
    :param search: registered recipe search (``"greedy"``, ``"optimal"``).
    :raises ValueError: when even the cheapest recipe exceeds the target (the
        message gives the smallest achievable BPW and size).
    """
    if (target_bpw is None) == (target_size is None):
        raise ConfigError("give exactly one of target_bpw (bits per weight) or target_size (MiB)")
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"table: expected a SensitivityTable, got {type(table).__name__}")
    target = target_bpw if target_bpw is not None else target_size
    field_name = "target_bpw" if target_bpw is not None else "target_size"
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise ConfigError(f"{field_name}: expected a positive number, got {target!r}")
    registry = registry or plugins.default_registry()
    impl = registry.get("recipe_search", search)
    grouped = rows_by_layer(table.rows)
    missing = [name for name in table.layer_names if name not in grouped]
    if missing:
        raise CompressionError(f"layers without any scored candidate: {', '.join(missing)}")
    options = [grouped[name] for name in table.layer_names]
    total = table.total_weights
    budget = (target * total) if target_bpw is not None else (target * 8 * 2**20 - table.uncompressed_bits)
    distortions = _finite_distortions(options)
    problem = RecipeProblem(layers=table.layer_names, costs=[[float(r.bits) for r in rows] for rows in options],
                            distortions=distortions, budget=float(budget))
    if problem.min_cost() > budget:
        lo_bits = problem.min_cost()
        raise ValueError(f"{field_name} {target:g} is below the smallest recipe of this table: "
                         f"{lo_bits / total:.3f} BPW all-in, "
                         f"{(lo_bits + table.uncompressed_bits) / 8 / 2**20:.3f} MiB")
    choice = list(impl(problem))
    if len(choice) != len(options) or any(not 0 <= j < len(rows) for j, rows in zip(choice, options)):
        raise ValueError(f"recipe search {search!r} returned an invalid choice {choice!r}")
    if problem.cost(choice) > budget:
        raise ValueError(f"recipe search {search!r} exceeded the budget: {problem.cost(choice):.0f} > {budget:.0f} bits")
    picked = [rows[j] for rows, j in zip(options, choice)]
    layers = [RecipeLayer(layer=r.layer, tensor=table.layer(r.layer).tensor, candidate=r.candidate, spec=r.spec,
                          palettizer=r.palettizer, numel=r.numel, bits=r.bits, index_bits=r.index_bits, score=r.score,
                          distortion=r.distortion) for r in picked]
    predicted = 0.0
    for entry in layers:
        predicted += entry.distortion
    return Recipe(layers=layers, metric=table.metric, unit=table.unit, higher_is_better=table.higher_is_better,
                  search=search, target_bpw=None if target_bpw is None else float(target_bpw),
                  target_size_mib=None if target_size is None else float(target_size), budget_bits=float(budget),
                  uncompressed_bits=table.uncompressed_bits, predicted_distortion=predicted,
                  predicted_score=_predict(table.metric, predicted, registry),
                  meta={"table": {k: table.meta[k] for k in ("model", "samples", "engine", "run_key")
                                  if k in table.meta}, "candidates": table.candidates})


def _finite_distortions(options: list) -> list[list[float]]:
    """Distortions with NaN/inf replaced by a value worse than any finite recipe (so searches stay exact)."""
    finite = [r.distortion for rows in options for r in rows if math.isfinite(r.distortion)]
    worst = (sum(abs(d) for d in finite) + 1.0) * 10.0
    return [[r.distortion if math.isfinite(r.distortion) else worst for r in rows] for rows in options]


def _predict(metric: str, distortion: float, registry: plugins.Registry) -> Optional[float]:
    try:
        impl = registry.get("sensitivity_metric", metric)
    except Exception:  # noqa: BLE001 - a table loaded without its metric plugin still makes recipes
        return None
    return float(impl.from_distortion(distortion)) if isinstance(impl, InvertibleMetric) else None


# ---------------------------------------------------------------------- apply


def apply_recipe(model: nn.Module, recipe: Recipe, *, table: Optional[SensitivityTable] = None,
                 inplace: bool = False, registry: Optional[plugins.Registry] = None, progress: Optional[bool] = None,
                 executor: Any = None, num_workers: int = 1, calibration_data: Any = None) -> nn.Module:
    """Compress ``model`` as ``recipe`` says and return it (a copy unless ``inplace``).

    With ``table`` (the one the recipe came from, still holding its records), each
    layer gets exactly the compressed tensor that was scored, with no clustering.
    Otherwise each palettizer named by the recipe clusters its layers from the
    original weights (:func:`bitsmith.palettization.palettize` on :meth:`Recipe.to_config`).
    Every compressed tensor carries its record (:mod:`bitsmith.compressed`), so sizes
    and export work as after any palettizer's ``prepare()``. ``calibration_data`` is
    passed as ``example_inputs`` to palettizers that need data (sensitive k-means, GPTQ).
    """
    registry = registry or plugins.default_registry()
    out = model if inplace else copy.deepcopy(model)
    modules = dict(out.named_modules())
    missing = [e.layer for e in recipe.layers if e.layer not in modules]  # before any clustering
    if missing:
        raise CompressionError(f"recipe layers not in {type(model).__name__}: {', '.join(missing[:8])}")
    records = table.records if table is not None else {}
    leftover: list[RecipeLayer] = []
    for entry in recipe.layers:
        rec = records.get((entry.layer, entry.candidate))
        if rec is None:
            leftover.append(entry)
            continue
        transplant_record(out, entry.layer, entry.tensor, rec)
    if leftover:
        # cluster from the original weights (as the sensitivity stage did), then move the records over
        prepared = palettize(model, _config(leftover), calibration_data, registry=registry, progress=progress,
                             executor=executor, num_workers=num_workers)
        for entry in leftover:
            found = compressed.records(prepared.get_submodule(entry.layer)).get(entry.tensor)
            if not isinstance(found, compressed.PalettizedTensor):
                raise CompressionError(f"{entry.layer}.{entry.tensor}: palettizer {entry.palettizer!r} attached no "
                                       "palettized record")
            transplant_record(out, entry.layer, entry.tensor, found)
    return out
