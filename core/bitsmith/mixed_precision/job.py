"""A whole mixed-precision run described by one config (YAML or CLI flags).

YAML form (``bitsmith mixed-precision --config job.yaml``)::

    mixed_precision:
      model: mypkg.models:build          # a function returning the nn.Module
      data: mypkg.data:calibration       # a function returning the sensitivity data
      target_bpw: 4                      # or target_size: 12.5 (MiB)
      metric: psnr
      search: [greedy, optimal]          # one name or several
      candidates: ["2-bit", "4-bit", "6-bit", "4-bit g16"]   # labels or {spec, palettizer, label}
      palettizer: kmeans
      engine: auto
      out: artifacts/mixed_precision
      pareto: [2, 3, 4, 5, 6]            # optional sweep + plot
      scheduler: tcp://10.0.0.5:8786     # optional: score on this Dask cluster (or num_workers: N locally)

:func:`run_job` computes the table once, then one recipe per search, and writes
``sensitivity.csv``/``.json``, ``recipe_<search>.yaml`` and ``config_<search>.yaml``
(the ``KMeansPalettizerConfig`` to feed any palettizer) under ``out``.

``scheduler`` names a running Dask scheduler: clustering and scoring then run on its
workers through ``distributed.Client(scheduler).get_executor()`` (the model and data
are sent to each worker once). The workers must be able to import bitsmith, the
plugins the candidates name and the module that defines the model.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from attrs import define, field

from .. import safe_yaml
from ..config import dump, from_dict
from ..errors import ConfigError
from .engine import ENGINES

__all__ = ["JOB_KEY", "MixedPrecisionJob", "load_job", "run_job"]

JOB_KEY = "mixed_precision"
"""Top-level key of a job YAML document."""


def _callable_spec(instance, attribute, value) -> None:
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise ValueError(f"{attribute.name}: expected 'package.module:function', got {value!r}")


def _positive_or_none(instance, attribute, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{attribute.name}: expected a positive number, got {value!r}")


def _scheduler(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, str) or "://" not in value or not value.split("://", 1)[1]:
        raise ValueError(f"scheduler: expected a Dask scheduler address like 'tcp://host:8786', got {value!r}")


def _engine(instance, attribute, value) -> None:
    if value not in ENGINES:
        raise ValueError(f"engine: {value!r} is not one of {', '.join(ENGINES)}")


@define(kw_only=True)
class MixedPrecisionJob:
    """Everything one mixed-precision run needs; see the module docstring for the YAML form."""

    model: str = field(validator=_callable_spec)
    data: str = field(validator=_callable_spec)
    target_bpw: Optional[float] = field(default=None, validator=_positive_or_none)
    target_size: Optional[float] = field(default=None, validator=_positive_or_none)
    metric: str = "psnr"
    search: list[str] = field(factory=lambda: ["greedy"])
    candidates: Optional[list[Any]] = None
    palettizer: str = "kmeans"
    engine: str = field(default="auto", validator=_engine)
    layers: Optional[list[str]] = None
    out: str = "artifacts/mixed_precision"
    cache_dir: Optional[str] = ".bitsmith-cache"
    num_workers: int = 1
    scheduler: Optional[str] = field(default=None, validator=_scheduler)
    pareto: Optional[list[float]] = None
    progress: Optional[bool] = None
    overwrite: bool = False

    def __attrs_post_init__(self) -> None:
        if (self.target_bpw is None) == (self.target_size is None):
            raise ValueError("target_bpw: give exactly one of target_bpw (bits per weight) or target_size (MiB)")
        if not self.search:
            raise ValueError("search: name at least one recipe search")
        if self.scheduler is not None and self.num_workers > 1:
            raise ValueError("scheduler: give either a Dask scheduler or num_workers > 1 (local processes), not both")


def load_job(source: Union[str, os.PathLike, dict]) -> MixedPrecisionJob:
    """A job from a YAML file, YAML text or a dict (with or without the ``mixed_precision:`` key)."""
    if isinstance(source, dict):
        data = source
        label = "job"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such job file")
        label = str(path)
        data = safe_yaml.load_file(path)
    else:
        raise ConfigError(f"cannot load a job from {type(source).__name__}; give a YAML path or a mapping")
    prefix = ""
    if isinstance(data, dict) and set(data) == {JOB_KEY}:
        data, prefix = data[JOB_KEY], JOB_KEY + "."
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping under {JOB_KEY!r}")
    data = {k: ([v] if k in ("search", "layers") and isinstance(v, str) else v) for k, v in data.items()}
    try:
        job = from_dict(data, MixedPrecisionJob)
    except ConfigError as exc:
        raise ConfigError([f"{prefix}{line}" for line in exc.lines]) from None
    if job.candidates is not None:
        from .candidates import resolve_candidates

        try:
            resolve_candidates(job.candidates)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{prefix}{exc}") from None
    return job


def _check_outputs(job: MixedPrecisionJob) -> None:
    """Refuse, before any work, files of ``job.out`` that exist (unless ``job.overwrite``); all listed at once."""
    from ..atomic import OverwriteError, check_can_write

    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a folder")
    names = ["sensitivity.csv", "sensitivity.json"] + [f"{kind}_{search}.yaml" for search in job.search
                                                       for kind in ("recipe", "config")]
    lines = []
    for name in names + (["pareto.png"] if job.pareto else []):
        try:
            check_can_write(out / name, overwrite=job.overwrite)
        except OverwriteError as exc:
            lines.append(f"out: {exc}")
    if lines:
        raise ConfigError(lines)


@contextlib.contextmanager
def _dask_executor(scheduler: Optional[str]) -> Iterator[Optional[cf.Executor]]:
    """An executor on the Dask cluster at ``scheduler`` (closed afterwards); ``None`` without one."""
    if scheduler is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("scheduler: running on a Dask cluster needs the 'distributed' package "
                          "(pip install distributed)") from None
    try:
        client = Client(scheduler)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"scheduler: cannot connect to {scheduler}: {exc}") from None
    try:
        yield client.get_executor()
    finally:
        client.close()


def run_job(job: MixedPrecisionJob, *, echo: Callable[[str], None] = print, head: int = 5) -> dict[str, Any]:
    """Run the three stages for ``job``; returns ``{"table", "recipes", "sweeps", "files"}`` and echoes a report."""
    from ..loading import import_callable
    from .pareto import pareto_sweep, plot_pareto
    from .recipe import generate_recipe
    from .sensitivity import compute_sensitivity
    from .targets import check_target

    _check_outputs(job)
    build_model = import_callable(job.model, field="model")
    load_data = import_callable(job.data, field="data")
    model, data = build_model(), load_data()
    check_target(model, job.candidates, target_bpw=job.target_bpw, target_size=job.target_size, layers=job.layers)
    with _dask_executor(job.scheduler) as executor:
        table = compute_sensitivity(model, data, job.candidates, metric=job.metric, palettizer=job.palettizer,
                                    layers=job.layers, cache_dir=job.cache_dir, num_workers=job.num_workers,
                                    engine=job.engine, progress=job.progress, executor=executor)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [table.save(out / name, overwrite=job.overwrite) for name in ("sensitivity.csv", "sensitivity.json")]
    seconds = table.meta["seconds"]
    echo(f"sensitivity: {len(table.layers)} layers x {len(table.candidates)} candidates, engine "
         f"{table.meta['engine']}, {seconds['total']:.1f} s ({table.meta['pairs_scored']} pairs scored)")
    echo(table.format(head))
    recipes, sweeps = {}, {}
    for search in job.search:
        recipe = generate_recipe(table, target_bpw=job.target_bpw, target_size=job.target_size, search=search)
        recipes[search] = recipe
        files.append(recipe.save(out / f"recipe_{search}.yaml", overwrite=job.overwrite))
        config_path = out / f"config_{search}.yaml"
        dump(recipe.to_config(), config_path, overwrite=job.overwrite)
        files.append(config_path)
        echo("")
        echo(recipe.summary())
        if job.pareto:
            sweeps[search] = pareto_sweep(table, job.pareto, search=search)
            echo(sweeps[search].format())
    if sweeps:
        try:
            plot_pareto(sweeps, out / "pareto.png", overwrite=job.overwrite)
            files.append(out / "pareto.png")
        except ImportError as exc:
            echo(f"(no plot: {exc})")
    echo("")
    echo("wrote " + ", ".join(str(f) for f in files))
    return {"table": table, "recipes": recipes, "sweeps": sweeps, "files": files}
