"""Sensitivity engine speed: naive full re-evaluation vs the fast engines, same run, same table.

Models (``--model``):

- ``mobilenet_v2``: ImageNet weights, calibration crops, PSNR of the logits; naive vs
  ``fast`` (torch.fx).
- ``minilm``: all-MiniLM-L6-v2 on the fidelity task's calibration sentences, MSE of
  the embeddings; naive vs ``block`` (fx cannot trace it).
- ``gpt2`` / ``llama``: a transformers GPT-2 / Llama architecture with random weights
  (small config), PSNR of the logits on random token ids; naive vs ``block``.

Both engines cluster every (layer, candidate) pair themselves (same cost; the cache is
off) and score every pair. Prints each stage's time, the speedup of the scoring stage
and of the whole call, and whether the two tables are identical (bit for bit).
``--local`` also runs the ``local`` engine (each layer on its own output, ``sqnr``)
and prints its Spearman rank correlation with the end-to-end distortions.

    .venv/bin/python benchmarks/sensitivity_bench.py                      # MobileNetV2, 64 crops
    .venv/bin/python benchmarks/sensitivity_bench.py --model minilm --local
    .venv/bin/python benchmarks/sensitivity_bench.py --model gpt2
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import torch


def _mobilenet(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    from bitsmith_zoo.data import image_crops
    from bitsmith_zoo.mobilenet_v2 import load_mobilenet_v2

    return load_mobilenet_v2().eval(), image_crops(args.crops, split="calibration"), "psnr", \
        f"MobileNetV2, {args.crops} crops"


def _minilm(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    from bitsmith_zoo.fidelity import minilm_task

    task = minilm_task()
    return task.model, task.calibration, task.sensitivity_metric, task.title


def _causal_lm(kind: str, args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=2048, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=args.n_layer, n_embd=256, n_head=4, n_positions=128, **common)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(num_hidden_layers=args.n_layer, hidden_size=256, intermediate_size=688,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                          pad_token_id=0, **common)
        model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 2048, (8, 64), generator=torch.Generator().manual_seed(1))
    return model.eval(), [{"input_ids": ids}], "psnr", \
        f"{type(model).__name__} ({args.n_layer} layers, random weights), 8 x 64 tokens"


def _compare(base: Any, other: Any, name: str) -> str:
    same_rows = [(r.layer, r.candidate, r.bits) for r in base.rows] == [(r.layer, r.candidate, r.bits)
                                                                         for r in other.rows]
    diffs = [abs(a.score - b.score) for a, b in zip(base.rows, other.rows)
             if not (a.score == b.score or (math.isinf(a.score) and a.score == b.score))]
    if same_rows and not diffs:
        return f"tables identical (naive vs {name}): {len(base.rows)} rows, every score bit-for-bit equal"
    return (f"tables differ (naive vs {name}): same rows {same_rows}, {len(diffs)} scores differ, max |diff| "
            f"{max(diffs, default=0.0):.3g}")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two equally long lists (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mobilenet_v2", "minilm", "gpt2", "llama"), default="mobilenet_v2")
    parser.add_argument("--crops", type=int, default=64, help="MobileNetV2 calibration crops (default 64)")
    parser.add_argument("--n-layer", type=int, default=6, help="gpt2/llama: decoder layers (default 6)")
    parser.add_argument("--candidates", nargs="+", default=["2", "4", "6"], help="candidate labels")
    parser.add_argument("--layers", nargs="+", default=None, help="layer names/regexes (default: all)")
    parser.add_argument("--local", action="store_true", help="also score with the local engine; rank correlation")
    args = parser.parse_args()

    from bitsmith.mixed_precision import compute_sensitivity

    build = {"mobilenet_v2": _mobilenet, "minilm": _minilm}.get(args.model) or (
        lambda a: _causal_lm(args.model, a))
    model, data, metric, title = build(args)
    engine = "fast" if args.model == "mobilenet_v2" else "block"
    print(f"{title}; metric {metric}; candidates {args.candidates}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    tables, totals, cpu = {}, {}, {}
    for name in ("naive", engine) + (("local",) if args.local else ()):
        start, start_cpu = time.perf_counter(), time.process_time()
        tables[name] = compute_sensitivity(model, data, args.candidates, metric="sqnr" if name == "local" else metric,
                                           engine=name, layers=args.layers, cache_dir=None)
        totals[name], cpu[name] = time.perf_counter() - start, time.process_time() - start_cpu
        s = tables[name].meta["seconds"]
        print(f"{name:>5}: total {totals[name]:7.1f} s wall ({cpu[name]:7.1f} s CPU) = baseline "
              f"{s['baseline']:.1f} + cluster {s['cluster']:.1f} + score {s['score']:.1f} s "
              f"({tables[name].meta['pairs']} pairs, engine used: {tables[name].meta['engine']})")
    naive, fast = tables["naive"], tables[engine]
    print(f"speedup of {engine} over naive, scoring stage: "
          f"{naive.meta['seconds']['score'] / fast.meta['seconds']['score']:.2f}x   whole compute_sensitivity: "
          f"{totals['naive'] / totals[engine]:.2f}x wall, {cpu['naive'] / cpu[engine]:.2f}x CPU time")
    print(_compare(naive, fast, engine))
    if args.local:
        local = tables["local"]
        rho = spearman([r.distortion for r in naive.rows], [r.distortion for r in local.rows])
        print(f"local engine: scoring stage {naive.meta['seconds']['score'] / local.meta['seconds']['score']:.1f}x "
              f"faster than naive; Spearman rank correlation of its distortions with end-to-end ({metric}): "
              f"{rho:.3f} over {len(local.rows)} pairs")
    print(fast.format(3))


if __name__ == "__main__":
    main()
