"""Palettize a Llama-architecture model of billions of parameters on a small machine (issue 15 item 3).

The model is a ``transformers`` ``LlamaForCausalLM`` with random weights, built on the
meta device and materialised directly in bfloat16 (never an fp32 copy), initialised in
place (N(0, 0.02) matrices, unit norms). ``KMeansPalettizer.prepare(inplace=True)``
palettizes every Linear and Embedding weight at 4-bit per-grouped-channel (axis 0,
group 16); the ``"kmeans"`` clusterer is wrapped to sum its time. Then, with ``--save``,
the model is written with ``bitsmith.pretrained.save_pretrained`` into ``--out``.

Printed: parameters and bf16 size, prepare time, summed kernel time and their ratio,
the process's peak RSS (``ru_maxrss``) over the bf16 model size and the extra peak
over the RSS after building, the save time and the files' size. Baseline to beat
(issue 15, same machine class): a 1.16B model took 332 s and +7.7 GB (1.74x its fp32
size, 12.5 GB peak).

Presets: ``--preset 3b`` (hidden 3200, intermediate 8640, 26 layers, vocab 32000:
3.43B parameters, 6.4 GiB bf16; measured on a quiet machine: 344 s, 10.48 GiB peak; with
``--save`` 1.60 GiB file, +0.16 GiB RSS during the save, peak unchanged), ``--preset 1b`` (hidden 2048,
intermediate 5632, 22 layers: 1.1B), ``--preset small`` (a 0.1B smoke run).

Run: ``.venv/bin/python benchmarks/llm_bench.py --preset small [--save --out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from palettize_bench import PeakRss, TimedClusterer, config  # noqa: E402

GIB = 2**30
PRESETS = {
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                  vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               vocab_size=32000),
    "3b": dict(hidden_size=3200, intermediate_size=8640, num_hidden_layers=26, num_attention_heads=32,
               vocab_size=32000),
}


def build_llama(preset: str, layers: int | None = None, seed: int = 0) -> torch.nn.Module:
    """A random-init bf16 ``LlamaForCausalLM``: built on the meta device, storage allocated once in bf16.

    ``layers`` overrides the preset's decoder layer count (same layer shapes, fewer layers).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(PRESETS[preset], **({} if layers is None else {"num_hidden_layers": layers}))
    cfg = LlamaConfig(**shape, dtype="bfloat16")
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm weights
            else:
                p.normal_(0.0, 0.02, generator=gen)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=cfg)  # non-persistent buffers: recompute, not left empty
    return model.eval()


def _embedding_parameters(preset: str) -> int:
    shape = PRESETS[preset]
    return 2 * shape["vocab_size"] * shape["hidden_size"]  # untied input embedding and lm_head


def _full_parameters(preset: str) -> int:
    """Parameters of the preset's full model (Llama with n_heads == n_kv_heads)."""
    s = PRESETS[preset]
    h, f = s["hidden_size"], s["intermediate_size"]
    return _embedding_parameters(preset) + s["num_hidden_layers"] * (4 * h * h + 3 * h * f + 2 * h) + h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers (default: the preset's); the full model's time and peak are then "
                             "extrapolated from this one's per-weight figures and printed as such")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--save", action="store_true", help="also save_pretrained the palettized model")
    parser.add_argument("--out", type=Path, default=None, help="folder for --save (must not exist)")
    args = parser.parse_args(argv)
    if args.save and args.out is None:
        parser.error("--save needs --out DIR")
    from bitsmith.palettization import KMeansPalettizer

    KMeansPalettizer(torch.nn.Sequential(torch.nn.Linear(64, 64)), config("per_tensor")).prepare(progress=False)
    proc = psutil.Process()
    t0 = time.perf_counter()
    model = build_llama(args.preset, args.layers)
    params = sum(p.numel() for p in model.parameters())
    bf16 = params * 2
    built_rss = proc.memory_info().rss
    print(f"Llama {args.preset}: {params / 1e9:.2f}B parameters, {bf16 / GIB:.2f} GiB bf16 "
          f"({params * 4 / GIB:.2f} GiB fp32); built in {time.perf_counter() - t0:.1f} s, RSS {built_rss / GIB:.2f} GiB; "
          f"{torch.get_num_threads()} torch threads")
    palettizer = KMeansPalettizer(model, config("per_grouped_channel", args.group_size))
    timed = TimedClusterer(palettizer.clusterer())
    palettizer.clusterer = lambda: timed
    t0 = time.perf_counter()
    palettizer.prepare(inplace=True, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = palettizer.report()
    result = {"preset": args.preset, "parameters": params, "bf16_gib": bf16 / GIB, "prepare_s": seconds,
              "kernel_s": timed.seconds, "kernel_calls": timed.calls, "time_over_kernel": seconds / timed.seconds,
              "peak_rss_gib": peak / GIB, "peak_over_bf16_model": peak / bf16,
              "extra_peak_gib": (peak - built_rss) / GIB, "extra_over_fp32_model": (peak - built_rss) / (params * 4),
              "compressed_weights": report.after.numel, "bpw_all_in": report.bpw}
    print(f"prepare: {seconds:.1f} s, kernel {timed.seconds:.1f} s in {timed.calls} calls "
          f"(end-to-end / kernel {seconds / timed.seconds:.2f}); peak RSS {peak / GIB:.2f} GiB = "
          f"{peak / bf16:.2f}x the bf16 model, +{(peak - built_rss) / GIB:.2f} GiB over the built model "
          f"({(peak - built_rss) / (params * 4):.2f}x fp32); {report.after.numel / 1e9:.2f}B weights at "
          f"{report.bpw:.3f} BPW all-in")
    if args.layers is not None and args.layers != PRESETS[args.preset]["num_hidden_layers"]:
        # The records' uint8 indices (1 byte per weight) grow with the model; the temporaries of the
        # layer being palettized do not (this slice already holds the largest layers, the embeddings).
        full = _full_parameters(args.preset)
        per_layer = (params - _embedding_parameters(args.preset)) / args.layers
        base = built_rss - bf16
        layer_temps = max(0, peak - built_rss - params)
        result.update(full_parameters=full, extrapolated_prepare_s=seconds * full / params,
                      layer_temporaries_gib=layer_temps / GIB,
                      extrapolated_peak_rss_gib=(base + full * 2 + full + layer_temps) / GIB)
        print(f"extrapolated to the full {args.preset} model ({full / 1e9:.2f}B parameters, "
              f"{PRESETS[args.preset]['num_hidden_layers']} layers of {per_layer / 1e6:.0f}M): prepare "
              f"~{result['extrapolated_prepare_s']:.0f} s at this machine's current speed; peak RSS "
              f"~{result['extrapolated_peak_rss_gib']:.1f} GiB = process {base / GIB:.2f} + bf16 model "
              f"{full * 2 / GIB:.2f} + indices {full / GIB:.2f} + one layer's temporaries {layer_temps / GIB:.2f}")
    if args.save:
        from bitsmith.pretrained import save_pretrained

        t0 = time.perf_counter()
        with PeakRss(interval=0.02) as rss:
            folder = save_pretrained(model, args.out)
        result["save_s"] = time.perf_counter() - t0
        result["saved_gib"] = sum(f.stat().st_size for f in folder.iterdir()) / GIB
        result["save_extra_gib"] = rss.extra / GIB
        result["peak_rss_after_save_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
        print(f"save_pretrained: {result['save_s']:.1f} s, {result['saved_gib']:.2f} GiB on disk; RSS during "
              f"the save at most +{result['save_extra_gib']:.2f} GiB over the {rss.before / GIB:.2f} GiB before it; "
              f"peak RSS now {result['peak_rss_after_save_gib']:.2f} GiB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
