"""The main job: three-stage mixed-precision palettization of MobileNetV2 (seed 000's workflow).

    ./run demo                      # or: python examples/mixed_precision_mobilenet.py

1. Sensitivity: every one of MobileNetV2's 53 conv/linear layers is palettized alone
   with every candidate and scored by the KL divergence of the logits from the fp32
   model's on calibration crops (photos the evaluation never sees). The fast torch.fx
   engine re-runs only the part of the network after the changed layer; the table is
   cached on disk (.bitsmith-cache), so a second run skips this stage.
2. Recipe: one candidate per layer for a 4.0 BPW budget (all-in: indices + LUTs +
   scales), by the "greedy" and the exact "optimal" search; saved as YAML and as a
   ``KMeansPalettizerConfig``.
3. Apply and evaluate: the recipes, uniform 4-bit (seed 000's config through
   ``KMeansPalettizer``) and the fp32 model on held-out crops: top-1 agreement with
   fp32, KL divergence and PSNR of the logits, and top-1 agreement on the broad set
   (256 crops of 16 more varied photos, harder: fp32 itself is often unsure on them);
   a sweep of targets is plotted.

Two candidate sets are compared: seed 000's 2/4/6-bit per-tensor k-means, and a
richer set that adds 3- and 8-bit, per-channel scales ("+scale": each output channel
is divided by its largest magnitude before clustering, 32 bits per channel) and GPTQ
index assignment ("@gptq", bitsmith-gptq: same LUTs and size as k-means, indices
chosen to keep each layer's output on the calibration crops close). Outputs go to
artifacts/mixed_precision_mobilenet/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

SEED_CANDIDATES = ["2-bit", "4-bit", "6-bit"]
RICH_CANDIDATES = SEED_CANDIDATES + ["3-bit", "8-bit", "2-bit +scale", "3-bit +scale", "4-bit +scale", "6-bit +scale",
                                     "2-bit +scale @gptq", "3-bit +scale @gptq", "4-bit +scale @gptq",
                                     "6-bit +scale @gptq"]


def logits(model: torch.nn.Module, crops: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``model``'s logits for ``crops``, computed ``chunk`` crops at a time (bounded memory)."""
    return torch.cat([model(crops[i:i + chunk]) for i in range(0, len(crops), chunk)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Mixed-precision palettization of MobileNetV2")
    parser.add_argument("--calibration-crops", type=int, default=32, help="crops for the sensitivity stage")
    parser.add_argument("--heldout-crops", type=int, default=64, help="crops for evaluation (other photos)")
    parser.add_argument("--broad-crops", type=int, default=256,
                        help="crops of the broad evaluation set (16 varied photos; 0: skip)")
    parser.add_argument("--target-bpw", type=float, default=4.0, help="all-in bits per weight")
    parser.add_argument("--seed-candidates-only", action="store_true", help="skip the richer candidate set")
    parser.add_argument("--out", default="artifacts/mixed_precision_mobilenet", help="output folder")
    parser.add_argument("--no-cache", action="store_true", help="recompute the sensitivity table")
    args = parser.parse_args()

    from bitsmith import plugins
    from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, generate_recipe, pareto_sweep, plot_pareto
    from bitsmith.palettization import (
        KMeansPalettizer,
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
        PalettizationSpec,
    )
    from bitsmith.palettization.spec import PerTensorGranularity
    from bitsmith.sizes import model_size
    from bitsmith.table import format_table
    from bitsmith_zoo.data import image_crops
    from bitsmith_zoo.mobilenet_v2 import load_mobilenet_v2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, tuple[float, float]] = {}  # stage -> (wall s, CPU s)

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def lap(name: str, since: tuple[float, float]) -> None:
        now = clock()
        timings[name] = (now[0] - since[0], now[1] - since[1])

    # ------------------------------------------------------------------ data and model
    start = clock()
    model = load_mobilenet_v2().eval()
    calibration = image_crops(args.calibration_crops, split="calibration")
    heldout = image_crops(args.heldout_crops, split="heldout")
    broad = image_crops(args.broad_crops, split="broad") if args.broad_crops else None
    with torch.inference_mode():
        reference = model(heldout)
        broad_reference = None if broad is None else logits(model, broad)
    lap("load model + crops + fp32 reference", start)
    kl, psnr = plugins.get("sensitivity_metric", "kl"), plugins.get("sensitivity_metric", "psnr")

    def fidelity(compressed: torch.nn.Module) -> dict[str, float]:
        with torch.inference_mode():
            out = compressed(heldout)
        return {"value": (out.argmax(1) == reference.argmax(1)).float().mean().item(),
                "kl": kl.score(reference, out), "psnr": psnr.score(reference, out)}

    def broad_agreement(compressed: torch.nn.Module) -> str:
        if broad is None:
            return "-"
        with torch.inference_mode():
            out = logits(compressed, broad)
        return f"{(out.argmax(1) == broad_reference.argmax(1)).float().mean().item():.1%}"

    print(f"MobileNetV2 (ImageNet weights): {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
          f"{args.calibration_crops} calibration crops, {args.heldout_crops} held-out crops from other photos, "
          f"{args.broad_crops} broad-set crops\n")

    # ------------------------------------------------------------------ stage 1: sensitivity
    candidates = SEED_CANDIDATES if args.seed_candidates_only else RICH_CANDIDATES
    start = clock()
    table = compute_sensitivity(model, calibration, candidates, metric="kl",
                                cache_dir=None if args.no_cache else ".bitsmith-cache")
    lap("stage 1: sensitivity table", start)
    s = table.meta["seconds"]
    print(f"Stage 1 - sensitivity: {len(table.layers)} layers x {len(table.candidates)} candidates = "
          f"{len(table.rows)} pairs ({table.meta['pairs_scored']} scored now, the rest from the cache), "
          f"engine: {table.meta['engine']}; baseline {s['baseline']:.1f} s, clustering {s['cluster']:.1f} s, "
          f"scoring {s['score']:.1f} s")
    print("First five layers, seed 000's candidates:")
    print(table.select(candidates=SEED_CANDIDATES).format(5))
    table.save(out / "sensitivity.csv", overwrite=True)  # the demo regenerates its own folder

    # ------------------------------------------------------------------ stage 2: recipes
    start = clock()
    recipes = {}
    sets = {"2/4/6-bit": table.select(candidates=SEED_CANDIDATES)}
    if not args.seed_candidates_only:
        sets["rich"] = table
    for set_name, sub in sets.items():
        for search in ("greedy", "optimal"):
            recipe = generate_recipe(sub, target_bpw=args.target_bpw, search=search)
            recipes[(set_name, search)] = recipe
            recipe.save(out / f"recipe_{set_name.replace('/', '_')}_{search}.yaml", overwrite=True)
    lap("stage 2: recipes (4 searches)", start)
    main_key = ("rich", "optimal") if ("rich", "optimal") in recipes else ("2/4/6-bit", "optimal")
    print(f"\nStage 2 - recipe ({main_key[1]} search, {main_key[0]} candidates, target {args.target_bpw:g} BPW):")
    print(recipes[main_key].summary())
    print(f"seed-style recipe (greedy, 2/4/6-bit):\n{recipes[('2/4/6-bit', 'greedy')].summary()}")
    recipes[main_key].to_config()  # the KMeansPalettizerConfig (module_name_configs), also written as YAML below
    from bitsmith.config import dump

    dump(recipes[main_key].to_config(), out / "config.yaml", overwrite=True)

    # ------------------------------------------------------------------ stage 3: apply + evaluate
    start = clock()
    rows = []
    fp32 = model_size(model)
    base = fidelity(model)
    rows.append(("fp32 baseline", 32.0, 32.0, fp32.mib, base["value"], base["kl"], base["psnr"],
                 broad_agreement(model)))
    uniform_cfg = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=4, granularity=PerTensorGranularity())}))
    uniform = KMeansPalettizer(model, uniform_cfg).prepare(example_inputs=(torch.randn(1, 3, 224, 224),))
    u_size, u_fid = model_size(uniform), fidelity(uniform)
    rows.append(("uniform 4-bit", u_size.bpw_index, u_size.bpw, u_size.mib, u_fid["value"], u_fid["kl"],
                 u_fid["psnr"], broad_agreement(uniform)))
    results = {}
    for (set_name, search), recipe in recipes.items():
        compressed = apply_recipe(model, recipe, table=table)
        size, fid = model_size(compressed), fidelity(compressed)
        results[(set_name, search)] = fid
        rows.append((f"mixed {set_name}, {search} (target {args.target_bpw:g})", size.bpw_index, size.bpw, size.mib,
                     fid["value"], fid["kl"], fid["psnr"], broad_agreement(compressed)))
    lap("stage 3: apply + evaluate", start)
    print(f"\nStage 3 - results on {args.heldout_crops} held-out crops (fidelity to the fp32 model; last column: "
          f"top-1 agreement on the {args.broad_crops} broad-set crops):")
    table_text = format_table(["Configuration", "BPW index", "BPW all-in", "Size (MiB)", "Top-1 agreement",
                               "KL (nats)", "PSNR (dB)", "Broad set"],
                              [(n, f"{bi:.3f}", f"{ba:.3f}", f"{mib:.2f}", f"{agree:.1%}", f"{k:.4f}", f"{p:.2f}", b)
                               for n, bi, ba, mib, agree, k, p, b in rows], align="lrrrrrrr")
    print(table_text)
    (out / "results.txt").write_text(table_text + "\n")
    best_mixed = max(results.values(), key=lambda r: r["value"])
    best_bpw = max(r.bpw for r in recipes.values())
    verdict = "beats" if best_mixed["value"] > u_fid["value"] and best_bpw <= u_size.bpw else "does NOT beat"
    print(f"mixed precision {verdict} uniform 4-bit at equal or lower BPW "
          f"({best_bpw:.3f} vs {u_size.bpw:.3f} all-in): top-1 agreement {best_mixed['value']:.1%} vs "
          f"{u_fid['value']:.1%}")

    # ------------------------------------------------------------------ pareto sweep + plot
    start = clock()
    targets = [2.5, 3.0, 3.5, 4.0, 5.0, 6.0]

    def evaluate(recipe):
        return fidelity(apply_recipe(model, recipe, table=table))

    sweeps = {f"{name}, optimal": pareto_sweep(sub, targets, search="optimal", eval_fn=evaluate)
              for name, sub in sets.items()}
    for label, sweep in sweeps.items():
        print(f"\nSweep ({label} candidates), evaluation = top-1 agreement on held-out crops:")
        print(sweep.format())
    try:
        plot_pareto(sweeps, out / "pareto.png", ylabel="top-1 agreement with fp32 (held-out crops)",
                    baselines={"uniform 4-bit": (u_size.bpw, u_fid["value"])},
                    title="MobileNetV2: mixed-precision palettization", overwrite=True)
        print(f"plot: {out / 'pareto.png'}")
    except ImportError as exc:
        print(f"(no plot: {exc})")
    lap("pareto sweep (evaluated)", start)

    print(f"\nStage timings ({torch.get_num_threads()} torch threads; CPU = this process's CPU time):")
    total = (sum(w for w, _ in timings.values()), sum(c for _, c in timings.values()))
    print(format_table(["Stage", "Wall (s)", "CPU (s)"],
                       [(k, f"{w:.1f}", f"{c:.1f}") for k, (w, c) in timings.items()] +
                       [("total", f"{total[0]:.1f}", f"{total[1]:.1f}")], align="lrr"))
    print(f"artifacts: {out}/ (sensitivity.csv, recipe_*.yaml, config.yaml, results.txt, pareto.png)")


if __name__ == "__main__":
    main()
