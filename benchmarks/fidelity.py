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
   task's extra candidates: bitsmith's answer.

Realized BPW is measured on the compressed model (``bitsmith.sizes``), fidelity on the
held-out data; the goal column checks the issue's targets.

    ./run bench fidelity                          # all three tasks (~30 min cold, seconds when cached)
    ./run bench fidelity --task mobilenet_v2      # one task
"""

from __future__ import annotations

import argparse
import time
import warnings

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
GOALS = {  # task -> (minimum fidelity of bitsmith's row, what the issue asks)
    "mobilenet_v2": (0.90, ">= 0.90 top-1 agreement at <= 4.0 BPW"),
    "minilm": (0.99, ">= 0.99 mean cosine at <= 4.0 BPW"),
    "efficientnet_lite0": (None, "mixed beats uniform at equal BPW"),
}


def candidate_sets(task_name: str) -> dict[str, list[str]]:
    """The growing candidate subsets compared for one task (the last is the full set)."""
    return {
        "mixed, seed candidates (2/4/6-bit k-means)": SEED,
        "mixed, + 3/8-bit, per-channel scales": KMEANS_RICH,
        "mixed, + GPTQ" + (" + extra" if task_name in EXTRA else ""): KMEANS_RICH + GPTQ + EXTRA.get(task_name, []),
    }


def run_task(task, target_bpw: float, cache_dir) -> list[tuple[str, float, float]]:
    """Rows ``(configuration, all-in BPW, fidelity)`` for one task: uniform 4-bit, then each candidate set."""
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
    rows = [("uniform 4-bit per-tensor k-means", model_size(uniform).bpw, task.fidelity(uniform))]
    for label, candidates in sets.items():
        recipe = generate_recipe(table.select(candidates=candidates), target_bpw=target_bpw, search="optimal")
        small = apply_recipe(task.model, recipe, table=table)
        rows.append((label, model_size(small).bpw, task.fidelity(small)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["all", "mobilenet_v2", "minilm", "efficientnet_lite0"], default="all")
    parser.add_argument("--target-bpw", type=float, default=4.0, help="all-in bits per weight (default 4.0)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the sensitivity tables")
    args = parser.parse_args()

    from bitsmith.table import format_table
    from bitsmith_zoo.fidelity import TASKS

    names = list(TASKS) if args.task == "all" else [args.task]
    summary = []
    for name in names:
        task = TASKS[name]()
        print(f"\n{task.title}; fidelity = {task.measure} with fp32 on the held-out data; "
              f"sensitivity metric {task.sensitivity_metric}")
        rows = run_task(task, args.target_bpw, None if args.no_cache else ".bitsmith-cache")
        print(format_table(["Configuration", "BPW all-in", task.measure],
                           [(label, f"{bpw:.3f}", f"{fid:.4f}") for label, bpw, fid in rows], align="lrr"))
        (_, u_bpw, u_fid), (_, best_bpw, best_fid) = rows[0], rows[-1]
        minimum, goal = GOALS[name]
        if minimum is None:
            met = best_bpw <= u_bpw and best_fid > u_fid
        else:
            met = best_bpw <= args.target_bpw + 1e-9 and best_fid >= minimum
        summary.append((name, goal, f"{best_bpw:.3f}", f"{best_fid:.4f}", f"{u_fid:.4f}", "met" if met else "NOT met"))
    print("\nGoals (issue 9):")
    print(format_table(["Task", "Goal", "BPW all-in", "bitsmith", "uniform 4-bit", "Result"], summary,
                       align="llrrrl"))


if __name__ == "__main__":
    main()
