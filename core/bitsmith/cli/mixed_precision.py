"""``bitsmith mixed-precision``: sensitivity table, recipe(s) and config for a model, from flags or a YAML job.

Examples::

    bitsmith mixed-precision --model mypkg.models:build --data mypkg.data:calibration \\
        --target-bpw 4 --metric psnr --search greedy optimal --out artifacts/mp
    bitsmith mixed-precision --config job.yaml            # see bitsmith.mixed_precision.job
    bitsmith mixed-precision --config job.yaml --target-bpw 3.5   # flags override the file
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError

_FLAG_FIELDS = ("model", "data", "target_bpw", "target_size", "metric", "search", "candidates", "palettizer", "engine",
                "layers", "out", "cache_dir", "num_workers", "pareto")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``mixed-precision`` subcommand."""
    p = subparsers.add_parser(
        "mixed-precision", help="per-layer sensitivity -> mixed-precision recipe -> palettizer config",
        description="Score every (layer, candidate) pair, pick one candidate per layer for a target BPW or size, "
                    "and write the table, the recipe(s) and the KMeansPalettizerConfig.")
    p.add_argument("--config", metavar="FILE.yaml", help="a job file (mixed_precision: {...}); flags override it")
    p.add_argument("--model", metavar="MODULE:FUNCTION", help="function returning the torch.nn.Module")
    p.add_argument("--data", metavar="MODULE:FUNCTION", help="function returning the sensitivity data "
                                                              "(a tensor batch or a list of batches)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-bpw", type=float, help="all-in bits per weight (indices + LUTs + scales)")
    target.add_argument("--target-size", type=float, metavar="MIB", help="whole-model size in MiB")
    p.add_argument("--metric", help="registered sensitivity metric (psnr, kl, sqnr, mse); default psnr")
    p.add_argument("--search", nargs="+", help="registered recipe search(es): greedy, optimal; default greedy")
    p.add_argument("--candidates", nargs="+", metavar="LABEL",
                   help="candidate labels, e.g. 2 4 6 '4-bit g16' '3-bit +scale' '4-bit @sensitive_kmeans' "
                        "(default 2/4/6-bit per-tensor)")
    p.add_argument("--palettizer", help="registered palettizer for candidates that name none; default kmeans")
    p.add_argument("--engine", choices=("auto", "fast", "block", "local", "naive"), help="sensitivity engine; default auto")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="layer names or regexes to score (default: all)")
    p.add_argument("--out", metavar="DIR", help="output folder; default artifacts/mixed_precision")
    p.add_argument("--cache-dir", metavar="DIR", help="sensitivity cache; default .bitsmith-cache")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the sensitivity cache")
    p.add_argument("--num-workers", type=int, help="processes for clustering and scoring; default 1")
    p.add_argument("--pareto", nargs="+", type=float, metavar="BPW", help="also sweep these targets and plot")
    p.add_argument("--head", type=int, default=5, help="layers of the sensitivity table to print; default 5")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace files an earlier run left in --out")
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="also import --model/--data modules from DIR (appended after the installed packages; "
                        "repeatable); nothing else is added to sys.path")
    p.set_defaults(func=run)


def job_from_args(args: argparse.Namespace) -> Any:
    """Merge the job file (if any) with the flags into a validated ``MixedPrecisionJob``."""
    from ..mixed_precision.job import JOB_KEY, load_job

    values: dict[str, Any] = {}
    if args.config:
        job = load_job(args.config)
        from ..config import to_dict

        values = to_dict(job)
        if args.target_bpw is not None or args.target_size is not None:
            values.pop("target_bpw", None)
            values.pop("target_size", None)
    for name in _FLAG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if args.no_cache:
        values["cache_dir"] = None
    if args.no_progress:
        values["progress"] = False
    if args.overwrite:
        values["overwrite"] = True
    for required in ("model", "data"):
        if not values.get(required):
            raise ConfigError(f"{required}: required (--{required} MODULE:FUNCTION or {JOB_KEY}.{required} in --config)")
    return load_job({JOB_KEY: values})


def run(args: argparse.Namespace) -> int:
    """Run the job; errors in flags or the job file exit with code 2 (path-precise message)."""
    from ..mixed_precision.job import run_job
    from ..pipeline.imports import extra_sys_path

    with extra_sys_path(args.path):
        run_job(job_from_args(args), head=args.head)
    return 0
