"""Refinement variants at a fixed compressed layout: what generalizes beyond the five calibration photos.

Builds the task's optimal mixed recipe from its cached sensitivity table exactly as
``benchmarks/fidelity.py`` does (full candidate set, ``--target-bpw`` all-in), then
refines copies of it with several settings (:data:`VARIANTS`) and prints, for the
unrefined start and for each variant, top-1 agreement with fp32 on the old held-out
crops and on the broad set (256 crops of 16 photos no calibration ever sees), broad
KL, agreement per fp32 confidence stratum, and the cost (seconds, the process's peak
RSS so far). Training and validation use the calibration photos only
(:func:`fidelity.refine_data`: four photos train, the fifth validates).

    .venv/bin/python benchmarks/refine_bench.py --variants fixed,aug,aug+feat --steps 60
    .venv/bin/python benchmarks/refine_bench.py --target-bpw 3.0
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import attrs
import torch

from fidelity import REFINE_BATCH, candidate_sets, refine_data, refine_options

#: variant -> (data: "fixed" crops or an "aug"mented stream, RefineOptions overrides of the fidelity defaults)
VARIANTS: dict[str, tuple[str, dict]] = {
    "fixed": ("fixed", {}),  # last session's data: 128 fixed crops of four photos
    "aug": ("aug", {}),
    "aug-lr1e-4": ("aug", {"lr": 1e-4, "eval_every": 5}),
    "aug-lr3e-5": ("aug", {"lr": 3e-5, "eval_every": 5}),
    "aug+anchor": ("aug", {"anchor": 10.0}),
    "aug-luts": ("aug", {"lr": 1e-4, "eval_every": 5, "train_scales": False}),
    "aug+feat": ("aug", {"feature_weight": 1.0}),
    "aug+feat-lr1e-4": ("aug", {"feature_weight": 1.0, "lr": 1e-4, "eval_every": 5}),
    "aug+feat10": ("aug", {"feature_weight": 10.0}),
    "aug+feat+anchor": ("aug", {"feature_weight": 1.0, "anchor": 1.0}),
}


def fixed_crops(task, batch_size: int):
    """Last session's data: 128 fixed random crops of four calibration photos, 32 of the fifth to validate."""
    from bitsmith_zoo.data import CALIBRATION_IMAGES, crop_sources, image_crops

    crops = image_crops(160, split="calibration", seed=1)
    held = torch.tensor([s == CALIBRATION_IMAGES[-1] for s in crop_sources(160, "calibration")])
    train = crops[~held]
    return [train[i:i + batch_size] for i in range(0, len(train), batch_size)], [crops[held]]


def mixed_model(task, target_bpw: float, cache_dir: str):
    """The optimal mixed recipe on the task's full candidate set, as ``fidelity.run_task`` builds it."""
    from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, generate_recipe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = compute_sensitivity(task.model, task.calibration, list(candidate_sets(task.name).values())[-1],
                                    metric=task.sensitivity_metric, calibration_data=task.calibration_data,
                                    cache_dir=cache_dir)
    recipe = generate_recipe(table, target_bpw=target_bpw, search="optimal")
    return apply_recipe(task.model, recipe, table=table)


def row(task, label: str, model, cost: str) -> tuple:
    """One printed row: held-out and broad agreement, broad KL, strata, cost."""
    from bitsmith.sizes import model_size

    broad = task.breakdown(model)
    strata = [f"{v:.3f}" for _, v, _ in broad.strata.values()]
    return (label, f"{model_size(model).bpw:.3f}", f"{task.fidelity(model):.4f}", f"{broad.measure:.4f}",
            f"{broad.kl:.4f}", *strata, cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["mobilenet_v2", "efficientnet_lite0"], default="mobilenet_v2")
    parser.add_argument("--target-bpw", type=float, default=4.0)
    parser.add_argument("--variants", default="fixed,aug", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: fidelity.py's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate for every variant")
    parser.add_argument("--batch", type=int, default=REFINE_BATCH, help="views per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmented views")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    from bitsmith.table import format_table
    from bitsmith_refine import refine
    from bitsmith_zoo.fidelity import STRATA, TASKS

    task = TASKS[args.task]()
    start = time.perf_counter()
    small = mixed_model(task, args.target_bpw, ".bitsmith-cache")
    print(f"{task.title}; mixed recipe at {args.target_bpw} BPW built in {time.perf_counter() - start:.0f} s")
    rows = [row(task, "mixed recipe, not refined", small, "")]
    for name in names:
        kind, overrides = VARIANTS[name]
        options = attrs.evolve(refine_options(task), **overrides)
        if args.steps:
            options = attrs.evolve(options, steps=args.steps)
        if args.lr:
            options = attrs.evolve(options, lr=args.lr)
        train, validation = (fixed_crops(task, args.batch) if kind == "fixed"
                             else refine_data(task, batch_size=args.batch, seed=args.seed))
        result = refine(small, task.model, train, validation=validation, options=options)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        label = (f"{name} (seed {args.seed}, lr {options.lr:g}, {result.steps} steps x {args.batch}, best {result.best_step}, "
                 f"val KL {result.loss_before:.4f}->{result.loss_after:.4f})")
        rows.append(row(task, label, result.model, f"{result.seconds:.0f} s, {peak:.0f} MiB"))
        print(f"{name}: validation KL by step " + ", ".join(f"{s}: {v:.4f}" for s, v in result.history))
        print(format_table(["Model", "BPW", "held-out", "broad", "broad KL", *(s[0] for s in STRATA), "cost"],
                           rows, align="lrrrrrrrl"), flush=True)


if __name__ == "__main__":
    main()
