"""Fidelity at a fixed budget: uniform 4-bit vs mixed precision on three real models (issue 9's targets).

For each task (:mod:`bitsmith_zoo.fidelity`: the fp32 model, calibration data, held-out
data the compression never sees, a fidelity measure), one sensitivity table is scored
on the calibration data over the task's full candidate set, and the same budget
(``--target-bpw``, all-in: indices + LUTs + scales) is spent by the optimal search on
growing subsets of it, so each row shows what one ingredient adds:

1. uniform 4-bit per-tensor k-means (seed 000's config), the baseline;
2. mixed, seed 000's candidates (2/4/6-bit per-tensor k-means);
3. mixed, + 3/8-bit and per-channel scales (k-means);
4. mixed, + GPTQ index assignment (``@gptq``, calibrated on the same data) and the
   task's extra candidates;
5. the same model refined (``bitsmith-refine``: LUT entries and per-channel scales
   fitted to the fp32 outputs and every refined layer's output on fresh augmented
   views of four calibration photos, the fifth validating / the calibration
   sentences; indices and size unchanged), with its cost (seconds, peak RSS).

Realized BPW is measured on the compressed model (``bitsmith.sizes``). Fidelity is
reported on the small held-out set and on the task's broad set (CNNs: 256 crops of 16
photos of varied kinds; MiniLM: held-out sentences + Python documentation
paragraphs), with KL next to agreement, and for the last row per source and per fp32
confidence stratum. The goal column checks issue 17's targets on the broad set.

    ./run bench fidelity                          # all three tasks (hours cold on 2 cores, minutes when cached)
    ./run bench fidelity --task mobilenet_v2      # one task
    ./run bench fidelity --target-bpw 3.0 --task mobilenet_v2
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import torch

SEED = ["2-bit", "4-bit", "6-bit"]
KMEANS_RICH = SEED + ["3-bit", "8-bit", "2-bit +scale", "3-bit +scale", "4-bit +scale", "6-bit +scale"]
GPTQ = ["2-bit +scale @gptq", "3-bit +scale @gptq", "4-bit +scale @gptq", "6-bit +scale @gptq"]
EXTRA = {
    # transformer layers: GPTQ without per-row scales and with grouped LUTs; the 11.7M-weight
    # word embedding with one LUT per embedding dimension (g1a1), also Fisher-weighted
    # (Sensitive K-Means); 1-bit for the pooler the sentence encoder does not use
    "minilm": ["1-bit", "2-bit @gptq", "3-bit @gptq", "4-bit @gptq", "6-bit @gptq", "2-bit g8 lut:int8 @gptq",
               "3-bit g8 lut:int8 @gptq", "4-bit g8 lut:int8 @gptq", "2-bit g1a1", "3-bit g1a1", "4-bit g1a1",
               "2-bit g1a1 @sensitive_kmeans", "3-bit g1a1 @sensitive_kmeans"],
}
GOALS = {  # (task, target BPW) -> minimum fidelity on the broad set (issue 17)
    ("mobilenet_v2", 4.0): 0.95,
    ("mobilenet_v2", 3.0): 0.90,
    ("efficientnet_lite0", 4.0): 0.95,
    ("minilm", 4.0): 0.995,
}
#: settings of the refine row (bitsmith_refine.RefineOptions), measured with benchmarks/refine_bench.py
REFINE_OPTIONS = {"steps": 60, "lr": 3e-4, "eval_every": 10, "feature_weight": 1.0}
REFINE_BATCH = 8  # augmented views per refinement step


def candidate_sets(task_name: str) -> dict[str, list[str]]:
    """The growing candidate subsets compared for one task (the last is the full set)."""
    return {
        "mixed, seed candidates (2/4/6-bit k-means)": SEED,
        "mixed, + 3/8-bit, per-channel scales": KMEANS_RICH,
        "mixed, + GPTQ" + (" + extra" if task_name in EXTRA else ""): KMEANS_RICH + GPTQ + EXTRA.get(task_name, []),
    }


def refine_data(task, batch_size: int = REFINE_BATCH, seed: int = 0):
    """``(training batches, validation batches)`` for refinement, from the calibration photos/sentences only.

    CNNs: an endless stream of fresh, strongly augmented views of four calibration photos
    (:func:`bitsmith_refine.augmented_views`: random resized crops of 8-100% of the
    area, flips, color jitter, grayscale, blur), ``batch_size`` per step; 32 views of the
    fifth photo validate (its center crop and augmented views), so the kept step is the
    one that generalizes to a photo training did not see. MiniLM: the calibration
    sentences joined in pairs to train, the plain ones to validate.
    """
    if task.name == "minilm":
        return task.calibration_data[1:], task.calibration
    from bitsmith_refine import augmented_views
    from bitsmith_zoo.data import CALIBRATION_IMAGES, center_crop, load_image, normalize, resize_shorter

    def norm(x):
        return normalize(x, "inception" if task.name == "efficientnet_lite0" else "imagenet")

    photos = [load_image(name) for name in CALIBRATION_IMAGES]
    train = augmented_views(photos[:-1], batch_size=batch_size, seed=seed, normalize=norm)
    views = next(augmented_views(photos[-1:], batch_size=31, seed=seed + 1, normalize=norm))
    center = norm(center_crop(resize_shorter(photos[-1], 256), 224)).unsqueeze(0)
    return train, [torch.cat([center, views])]


def run_refine(task, small, options=None):
    """``(refined model, note)``: :func:`bitsmith_refine.refine` on calibration data only, with its cost.

    ``options``: :class:`bitsmith_refine.RefineOptions`; ``None``: :data:`REFINE_OPTIONS`
    (MiniLM: the same with the MSE loss).
    """
    from bitsmith_refine import refine

    options = refine_options(task) if options is None else options
    train, validation = refine_data(task)
    result = refine(small, task.model, train, validation=validation, options=options)
    note = (f"refine: {result.parameters} values, {result.steps} steps, {result.seconds:.0f} s, "
            f"peak RSS {result.peak_rss_mib:.0f} MiB; validation {options.loss} {result.loss_before:.4g} -> "
            f"{result.loss_after:.4g} (step {result.best_step})")
    return result.model, note


def refine_options(task):
    """The refinement settings of the refine row for ``task`` (:data:`REFINE_OPTIONS`, MSE loss for embeddings)."""
    import attrs
    from bitsmith_refine import RefineOptions

    return attrs.evolve(RefineOptions(**REFINE_OPTIONS), loss="kl" if task.classifier else "mse")


def run_task(task, target_bpw: float, cache_dir, refine: bool = True) -> tuple[list[tuple], object, list[str]]:
    """Rows ``(configuration, all-in BPW, held-out fidelity, broad breakdown)``, the last row's breakdown, notes."""
    from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, generate_recipe
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig
    from bitsmith.sizes import model_size

    sets = candidate_sets(task.name)
    start = time.perf_counter()
    with warnings.catch_warnings():  # MiniLM: fx cannot trace it, the naive engine is used (said below)
        warnings.simplefilter("ignore")
        table = compute_sensitivity(task.model, task.calibration, list(sets.values())[-1],
                                    metric=task.sensitivity_metric, calibration_data=task.calibration_data,
                                    cache_dir=cache_dir)
    print(f"  sensitivity: {len(table.layers)} layers x {len(table.candidates)} candidates, "
          f"{table.meta['pairs_scored']} pairs scored now ({table.meta['engine']} engine), "
          f"{time.perf_counter() - start:.0f} s")
    uniform = KMeansPalettizer(task.model, KMeansPalettizerConfig()).prepare()  # 4-bit per-tensor everywhere
    rows = [("uniform 4-bit per-tensor k-means", model_size(uniform).bpw, task.fidelity(uniform),
             task.breakdown(uniform))]
    for label, candidates in sets.items():
        recipe = generate_recipe(table.select(candidates=candidates), target_bpw=target_bpw, search="optimal")
        small = apply_recipe(task.model, recipe, table=table)
        rows.append((label, model_size(small).bpw, task.fidelity(small), task.breakdown(small)))
    notes = []
    if refine:
        refined, note = run_refine(task, small)
        notes.append(note)
        rows.append(("+ refine (LUTs, scales)", model_size(refined).bpw, task.fidelity(refined),
                     task.breakdown(refined)))
    return rows, notes


def format_breakdown(task, breakdown) -> str:
    """Per-source and per-stratum table of one row's broad-set breakdown."""
    from bitsmith.table import format_table

    def kl(v):
        return "" if v is None else f"{v:.4f}"

    parts = [(f"source: {name}", n, f"{value:.4f}", kl(k)) for name, (n, value, k) in breakdown.sources.items()]
    parts += [(f"fp32 top-1 {label}", n, f"{value:.4f}", kl(k)) for label, (n, value, k) in breakdown.strata.items()]
    return format_table(["Broad set part", "rows", task.measure, "KL"], parts, align="lrrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["all", "mobilenet_v2", "minilm", "efficientnet_lite0"], default="all")
    parser.add_argument("--target-bpw", type=float, default=4.0, help="all-in bits per weight (default 4.0)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the sensitivity tables")
    parser.add_argument("--no-refine", action="store_true", help="skip the refinement row")
    args = parser.parse_args()

    from bitsmith.table import format_table
    from bitsmith_zoo.fidelity import TASKS

    names = list(TASKS) if args.task == "all" else [args.task]
    summary = []
    for name in names:
        task = TASKS[name]()
        print(f"\n{task.title}; fidelity = {task.measure} with fp32; broad set: {task.broad.description}; "
              f"sensitivity metric {task.sensitivity_metric}")
        rows, notes = run_task(task, args.target_bpw, None if args.no_cache else ".bitsmith-cache",
                               refine=not args.no_refine)
        print(format_table(["Configuration", "BPW all-in", f"held-out {task.measure}", f"broad {task.measure}",
                            "broad KL"],
                           [(label, f"{bpw:.3f}", f"{held:.4f}", f"{b.measure:.4f}",
                             "" if b.kl is None else f"{b.kl:.4f}") for label, bpw, held, b in rows], align="lrrrr"))
        for note in notes:
            print(note)
        label, best_bpw, best_held, best = max(rows[1:], key=lambda r: r[3].measure)
        print(f"best row ({label}) on the broad set:\n{format_breakdown(task, best)}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"process peak RSS so far: {peak:.0f} MiB")
        minimum = GOALS.get((name, args.target_bpw))
        met = minimum is not None and best_bpw <= args.target_bpw + 1e-9 and best.measure >= minimum
        summary.append((name, f">= {minimum} at <= {args.target_bpw:g} BPW" if minimum else "(no goal)",
                        f"{best_bpw:.3f}", f"{best_held:.4f}", f"{best.measure:.4f}",
                        f"{best_held - best.measure:+.4f}", "met" if met else ("NOT met" if minimum else "-")))
    print("\nGoals (issue 17, broad set):")
    print(format_table(["Task", "Goal", "BPW all-in", "held-out", "broad", "gap", "Result"], summary,
                       align="llrrrrl"))


if __name__ == "__main__":
    main()
