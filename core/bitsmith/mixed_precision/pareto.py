"""Pareto sweep: recipes for a range of targets, optionally evaluated end to end, and their plot.

``pareto_sweep(table, targets=[2, 2.5, ..., 6])`` generates one recipe per target
from the same sensitivity table (no model work), and when ``eval_fn`` is given calls
``eval_fn(recipe)`` on each (e.g. compress with :func:`apply_recipe` and measure
top-1 agreement on held-out data). :func:`plot_pareto` draws the metric against the
realized all-in BPW, like seed 000's accuracy-vs-BPW graph (matplotlib is an
optional extra: ``pip install 'bitsmith[plot]'``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from attrs import define, field

from .. import atomic, plugins
from ..errors import ConfigError
from ..table import format_number, format_table
from .recipe import Recipe, generate_recipe
from .table import SensitivityTable

__all__ = ["ParetoPoint", "ParetoSweep", "pareto_sweep", "plot_pareto"]


@define
class ParetoPoint:
    """One target of a sweep: its recipe and, with an ``eval_fn``, the evaluation result."""

    target: float
    recipe: Recipe
    evaluation: Any = None
    eval_seconds: float = 0.0

    @property
    def bpw(self) -> float:
        """Realized all-in BPW."""
        return self.recipe.bpw

    @property
    def value(self) -> Optional[float]:
        """The evaluation as a number (the ``"value"`` entry of a dict result), else ``None``."""
        ev = self.evaluation
        if isinstance(ev, Mapping):
            ev = ev.get("value")
        return float(ev) if isinstance(ev, (int, float)) else None


@define
class ParetoSweep:
    """Points of a sweep, in target order, plus the targets no recipe could meet."""

    points: list[ParetoPoint]
    search: str
    target_kind: str
    skipped: list[tuple[float, str]] = field(factory=list)

    def __iter__(self):
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def format(self) -> str:
        """A table: target, realized BPW (index, all-in), size, predicted score, evaluation."""
        rows = []
        for p in self.points:
            r = p.recipe
            ev = p.evaluation
            if isinstance(ev, Mapping):
                ev = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items())
            rows.append((f"{p.target:g}", f"{r.bpw_index:.3f}", f"{r.bpw:.3f}", f"{r.size_mib:.2f}",
                         "-" if r.predicted_score is None else format_number(r.predicted_score),
                         "-" if ev is None else (f"{ev:.4f}" if isinstance(ev, float) else str(ev))))
        head = ["Target " + ("BPW" if self.target_kind == "bpw" else "MiB"), "BPW index", "BPW all-in", "Size (MiB)",
                "Predicted", "Evaluation"]
        text = format_table(head, rows, align="rrrrrl")
        for target, why in self.skipped:
            text += f"\nskipped target {target:g}: {why}"
        return text

    def __str__(self) -> str:
        return self.format()


def pareto_sweep(table: SensitivityTable, targets: Iterable[float], search: str = "greedy", *,
                 eval_fn: Optional[Callable[[Recipe], Any]] = None, target: str = "bpw",
                 registry: Optional[plugins.Registry] = None) -> ParetoSweep:
    """One recipe per target (``target="bpw"``: all-in BPW; ``"size"``: MiB), evaluated with ``eval_fn`` if given.

    A target below the table's smallest recipe is skipped and listed in
    ``sweep.skipped`` with the reason.
    """
    if target not in ("bpw", "size"):
        raise ConfigError(f"target: {target!r} is not one of bpw, size")
    values = sorted(float(t) for t in targets)
    if not values:
        raise ConfigError("targets: give at least one target")
    points, skipped = [], []
    for value in values:
        try:
            recipe = generate_recipe(table, **({"target_bpw": value} if target == "bpw" else {"target_size": value}),
                                     search=search, registry=registry)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            skipped.append((value, str(exc)))
            continue
        point = ParetoPoint(target=value, recipe=recipe)
        if eval_fn is not None:
            start = time.perf_counter()
            point.evaluation = eval_fn(recipe)
            point.eval_seconds = time.perf_counter() - start
        points.append(point)
    return ParetoSweep(points=points, search=search, target_kind=target, skipped=skipped)


def plot_pareto(sweeps: Union[ParetoSweep, Mapping[str, ParetoSweep]], path: Union[str, Path, None] = None, *,
                y: str = "auto", ylabel: Optional[str] = None, baselines: Optional[Mapping[str, tuple[float, float]]] = None,
                title: Optional[str] = None, overwrite: bool = False) -> Any:
    """Plot metric vs realized all-in BPW for one or several sweeps; returns the matplotlib ``Figure``.

    With ``path`` the figure is written atomically; an existing file only with ``overwrite=True``.

    :param sweeps: a sweep, or ``{"label": sweep}`` for several curves.
    :param path: save the figure there (``.png``, ``.svg``, ``.pdf``) when given.
    :param y: ``"evaluation"`` (the ``eval_fn`` results), ``"predicted"`` (predicted
        score) or ``"auto"`` (evaluations when every point has one).
    :param baselines: extra labelled points ``{"uniform 4-bit": (bpw, value)}``.
    :raises ImportError: when matplotlib is not installed (with the install command).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_pareto needs matplotlib: pip install 'bitsmith[plot]' (or pip install matplotlib)") \
            from exc
    if y not in ("auto", "evaluation", "predicted"):
        raise ConfigError(f"y: {y!r} is not one of auto, evaluation, predicted")
    series = {"": sweeps} if isinstance(sweeps, ParetoSweep) else dict(sweeps)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    used_eval = False
    for label, sweep in series.items():
        use_eval = y == "evaluation" or (y == "auto" and all(p.value is not None for p in sweep.points))
        used_eval |= use_eval
        xs = [p.bpw for p in sweep.points]
        ys = [p.value if use_eval else _finite(p.recipe.predicted_score) for p in sweep.points]
        ax.plot(xs, ys, marker="o", label=label or sweep.search)
    for label, (bx, by) in (baselines or {}).items():
        ax.scatter([bx], [by], marker="s", zorder=3, label=label)
    first = next(iter(series.values()))
    metric = first.points[0].recipe.metric.upper() if first.points else ""
    ax.set_xlabel("realized BPW (all-in: indices + LUTs + scales)")
    ax.set_ylabel(ylabel or ("evaluation" if used_eval else f"predicted {metric}"))
    ax.set_title(title or "mixed-precision palettization: quality vs bits per weight")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        with atomic.temp_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=120)
    return fig


def _finite(value: Optional[float]) -> float:
    return value if value is not None and math.isfinite(value) else float("nan")
