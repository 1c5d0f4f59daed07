"""kmeans vs sensitive_kmeans vs dkm: fidelity, accuracy, peak memory; and DKM's memory-saving mode at 25M weights.

Three parts, every number measured in this run:

1. **digits CNN** (trained here on ``sklearn.datasets.load_digits``, 1297/500 split):
   2- and 3-bit per-tensor palettization of all four layers with each algorithm;
   held-out KL to the fp32 model, top-1 agreement, accuracy. SKM calibrates on 512
   training digits (default label-free loss); DKM fine-tunes for ``--digits-steps``
   steps (cross-entropy + KL to the fp32 model). Then a robustness sweep: SKM vs
   k-means over 8 calibration sets/seeds at Fisher temperature 1 and 2.
2. **MobileNetV2** (``bitsmith_zoo``, ImageNet weights; real photo crops, calibration
   and held-out from disjoint images): 2/3/4-bit, one LUT per 8 output channels, on
   every conv/linear with at least 2048 weights (coremltools' default
   ``weight_threshold``); held-out KL and top-1 agreement with the fp32 model (no
   labels). SKM: 128 calibration crops; DKM: ``--mobilenet-steps`` distillation steps
   (batch 8, Adam lr 1e-5, batch norms frozen) on 256 calibration crops, 2 and 3 bits.
3. **DKM memory at 25M weights**: four ``Linear(2500, 2500)`` layers, 4-bit per-tensor
   (16 centroids), one SGD step, with and without ``memory_saving``, against a plain
   (uncompressed) step; on the CPU (peak RSS) or, with ``--memory-device cuda``, on a
   GPU (``torch.cuda.max_memory_allocated``).

Every algorithm run happens in its own fresh process; its peak memory is the peak
resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) above the
process's size once model and data are loaded, so it counts what the algorithm
allocates. Usage::

    python benchmarks/algorithms_bench.py [--quick] [--skip-mobilenet] [--skip-memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import bitsmith
from bitsmith.table import format_table

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak resident memory (MiB) allocated inside the ``with`` block, above the size on entry."""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current RSS
        self.base = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mib = (_status_kib("VmHWM") - self.base) / 1024


# --------------------------------------------------------------------------- models and data


class DigitsCNN(nn.Module):
    """Two 3x3 convs + two linears for 8x8 digits (41k weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class DigitsNet(nn.Module):
    """A second small digits CNN, not the one SKM's defaults were chosen on: 5x5 conv, avg-pool, two linears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 24, 5, padding=2)
        self.fc1 = nn.Linear(24 * 4 * 4, 48)
        self.fc2 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.conv(x)), 2)
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits, shuffled with seed 0: 1297 training, 500 held-out images in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1297], y[:1297], x[1297:], y[1297:]


def train_digits_cnn(cls: type = DigitsCNN, seed: int = 0) -> nn.Module:
    """12 epochs of Adam with a one-cycle schedule (DigitsCNN, seed 0: 99.0% held-out accuracy)."""
    torch.manual_seed(seed)
    model = cls()
    x, y, _, _ = digits_data()
    epochs, batch = 12, 64
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * -(-x.shape[0] // batch))
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def spec_dict(n_bits: int, group_size: int | None) -> dict:
    gran = {"type": "per_grouped_channel", "axis": 0, "group_size": group_size} if group_size else {"type": "per_tensor"}
    return {"op_state_spec": {"weight": {"n_bits": n_bits, "granularity": gran}}}


def mobilenet_targets(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() >= 2048]


@torch.no_grad()
def fidelity(reference_logits: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
             batch: int = 64) -> dict[str, float]:
    model.eval()
    out = torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
    kl = F.kl_div(F.log_softmax(out, -1), F.log_softmax(reference_logits, -1), log_target=True,
                  reduction="batchmean").item()
    result = {"kl": kl, "agreement": (out.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()}
    if y is not None:
        result["accuracy"] = (out.argmax(-1) == y).float().mean().item()
    return result


def freeze_norms(model: nn.Module) -> None:
    """Train mode for everything except batch norms and dropout (small distillation batches)."""
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
            m.eval()


# --------------------------------------------------------------------------- one algorithm run (child process)


def warm_up(algo: str) -> None:
    """Run ``algo`` once on a tiny model so that lazy imports and one-time setup stay out of the measurement."""
    tiny = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config: dict[str, Any] = {"global_config": spec_dict(2, None)}
    palettizer = bitsmith.plugins.get("palettizer", algo)(tiny, {**config, "dkm": {"memory_saving": True}}
                                                          if algo == "dkm" else config)
    if algo == "sensitive_kmeans":
        palettizer.compute_sensitivity([torch.randn(4, 16)], num_samples=4)
    model = palettizer.prepare()
    if algo == "dkm":
        model(torch.randn(2, 16)).sum().backward()
        palettizer.snap()


def run_algorithm(job: dict, work: Path) -> dict:
    """Load model/data, then palettize with one algorithm under :class:`PeakMemory`, then evaluate."""
    torch.manual_seed(0)
    palettizer_cls = bitsmith.plugins.get("palettizer", job["algo"])
    warm_up(job["algo"])
    if job["model"] == "digits":
        reference = DigitsCNN()
        reference.load_state_dict(torch.load(work / "digits.pt"))
        reference.eval()
        x, y, xt, yt = digits_data()
        config = {"global_config": spec_dict(job["bits"], None)}
        calibration = [x[i:i + 64] for i in range(0, 512, 64)]
        pool, pool_labels, steps, batch, lr = x, y, job["steps"], 64, 1e-3
    else:
        from bitsmith_zoo.mobilenet_v2 import load_mobilenet_v2

        reference = load_mobilenet_v2().eval()
        crops = torch.load(work / "crops.pt")
        x, xt, y, yt = crops["calibration"], crops["heldout"], None, None
        spec = spec_dict(job["bits"], 8)
        config = {"global_config": None, "module_name_configs": {n: spec for n in mobilenet_targets(reference)}}
        calibration = [x[i:i + 16] for i in range(0, 128, 16)]
        pool, pool_labels, steps, batch, lr = x, None, job["steps"], 8, 1e-5
    with torch.no_grad():
        ref_test = torch.cat([reference(xt[i:i + 64]) for i in range(0, xt.shape[0], 64)])
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    with PeakMemory() as peak:
        if job["algo"] == "kmeans":
            palettizer = palettizer_cls(reference, config)
            model = palettizer.prepare()
        elif job["algo"] == "sensitive_kmeans":
            palettizer = palettizer_cls(reference, config)
            palettizer.compute_sensitivity(calibration, num_samples=sum(b.shape[0] for b in calibration))
            model = palettizer.prepare()
        else:
            config["dkm"] = {"temperature": 0.05, "memory_saving": True}
            palettizer = palettizer_cls(reference, config)
            model = palettizer.prepare()
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            gen = torch.Generator().manual_seed(0)
            freeze_norms(model)
            for _ in range(steps):
                idx = torch.randint(0, pool.shape[0], (batch,), generator=gen)
                out = model(pool[idx])
                with torch.no_grad():
                    teacher = reference(pool[idx])
                loss = F.kl_div(F.log_softmax(out, -1), F.log_softmax(teacher, -1), log_target=True,
                                reduction="batchmean")
                if pool_labels is not None:
                    loss = loss + F.cross_entropy(out, pool_labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            palettizer.snap()
            extra["steps"] = steps
    seconds = time.perf_counter() - start
    report = palettizer.report()
    return {**job, **fidelity(ref_test, model, xt, yt), "peak_mib": peak.mib, "seconds": seconds,
            "bpw": report.bpw, **extra}


class CudaPeakMemory:
    """Peak CUDA memory (MiB) allocated inside the ``with`` block, above the allocation on entry."""

    def __enter__(self) -> "CudaPeakMemory":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.synchronize()
        self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20


def run_memory(job: dict, work: Path) -> dict:
    """One training step of a 25M-weight model: plain, DKM, or DKM with memory_saving (CPU RSS or CUDA)."""
    torch.manual_seed(0)
    device = torch.device(job["device"])
    measure = CudaPeakMemory if device.type == "cuda" else PeakMemory
    model = nn.Sequential(*[nn.Linear(2500, 2500, bias=False) for _ in range(4)]).to(device)
    x = torch.randn(8, 2500, device=device)
    result: dict[str, Any] = {**job, "weights": sum(p.numel() for p in model.parameters())}
    if job["mode"] != "plain":
        dkm = bitsmith.plugins.get("palettizer", "dkm")
        config = {"global_config": {"op_state_spec": {"weight": {"n_bits": 4}}},
                  "dkm": {"memory_saving": job["mode"] == "dkm_memory_saving", "iterations": job["iterations"]}}
        with measure() as prep:
            model = dkm(model, config).prepare(inplace=True)
        result["prepare_peak_mib"] = prep.mib
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    with measure() as peak:
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
    result.update(step_peak_mib=peak.mib, step_seconds=time.perf_counter() - start)
    return result


def child(job: dict, work: Path) -> None:
    torch.set_num_threads(job["threads"])
    result = run_memory(job, work) if job["model"] == "synthetic25m" else run_algorithm(job, work)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(job: dict, work: Path) -> dict:
    """Run ``job`` in a fresh interpreter and return its result."""
    cmd = [sys.executable, str(HERE), "--job", json.dumps(job), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"job {job} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- the SKM robustness sweep (in process)


def skm_sweep(reference: nn.Module) -> list[tuple]:
    """SKM vs k-means held-out KL over 8 calibration sets/seeds, Fisher temperature 1 and 2."""
    skm_cls = bitsmith.plugins.get("palettizer", "sensitive_kmeans")
    km_cls = bitsmith.plugins.get("palettizer", "kmeans")
    x, _, xt, yt = digits_data()
    with torch.no_grad():
        ref = reference(xt)
    settings = [(0, 512, 0), (0, 512, 1), (512, 512, 0), (512, 512, 1), (0, 1297, 0), (0, 1297, 1),
                (256, 512, 0), (256, 512, 1)]
    rows = []
    for bits in (2, 3):
        config = {"global_config": spec_dict(bits, None)}
        km = fidelity(ref, km_cls(reference, config).prepare(), xt, yt)["kl"]
        for temperature in (1.0, 2.0):
            ratios = []
            for offset, n, seed in settings:
                skm = skm_cls(reference, config)
                skm.compute_sensitivity([x[i:i + 64] for i in range(offset, offset + n, 64)], num_samples=n,
                                        seed=seed, temperature=temperature)
                ratios.append(fidelity(ref, skm.prepare(), xt, yt)["kl"] / km)
            wins = sum(r < 1 for r in ratios)
            geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            rows.append((bits, temperature, f"{wins}/{len(ratios)}", round(geo, 2), round(max(ratios), 2)))
    return rows


def skm_seed_sweep(seeds: range = range(1, 6)) -> list[tuple]:
    """SKM (default options) vs k-means held-out KL on :class:`DigitsNet` trained with each seed, 2 and 3 bits."""
    skm_cls = bitsmith.plugins.get("palettizer", "sensitive_kmeans")
    km_cls = bitsmith.plugins.get("palettizer", "kmeans")
    x, _, xt, yt = digits_data()
    rows = []
    for seed in seeds:
        reference = train_digits_cnn(DigitsNet, seed)
        with torch.no_grad():
            ref = reference(xt)
        accuracy = fidelity(ref, reference, xt, yt)["accuracy"]
        for bits in (2, 3):
            config = {"global_config": spec_dict(bits, None)}
            km = fidelity(ref, km_cls(reference, config).prepare(), xt, yt)
            skm = skm_cls(reference, config)
            skm.compute_sensitivity([x[i:i + 64] for i in range(0, 512, 64)], num_samples=512)
            sk = fidelity(ref, skm.prepare(), xt, yt)
            rows.append((seed, f"{100 * accuracy:.1f}", bits, f"{km['kl']:.4f}", f"{sk['kl']:.4f}",
                         round(sk["kl"] / km["kl"], 2), f"{100 * km['agreement']:.1f}",
                         f"{100 * sk['agreement']:.1f}"))
    return rows


# --------------------------------------------------------------------------- main


def fmt(results: list[dict], with_accuracy: bool) -> str:
    headers = ["algorithm", "bits", "BPW", "KL", "top-1 agree %"] + (["accuracy %"] if with_accuracy else []) + [
        "peak MiB", "seconds"]
    rows = []
    for r in results:
        row = [r["algo"] + (f" ({r['steps']} steps)" if "steps" in r and r["algo"] == "dkm" else ""),
               r["bits"], f"{r['bpw']:.3f}", f"{r['kl']:.4f}", f"{100 * r['agreement']:.1f}"]
        if with_accuracy:
            row.append(f"{100 * r['accuracy']:.1f}")
        row += [f"{r['peak_mib']:.0f}", f"{r['seconds']:.1f}"]
        rows.append(row)
    return format_table(headers, rows, align="lrrrrrrr"[:len(headers)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and crops: a smoke run, not results")
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--seeds-only", action="store_true",
                        help="only SKM vs k-means on a second digits CNN over 5 training seeds")
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--mobilenet-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: stable on busy machines)")
    parser.add_argument("--memory-device", default="cpu", help="device of the 25M memory runs: cpu (peak RSS) or cuda")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        child(json.loads(args.job), args.work)
        return
    torch.set_num_threads(args.threads)
    if args.seeds_only:
        print("\n## SKM (defaults) vs k-means on DigitsNet, 5 training seeds, per-tensor (held-out 500 images)\n")
        print(format_table(["seed", "fp32 acc %", "bits", "k-means KL", "SKM KL", "SKM/k-means",
                            "k-means agree %", "SKM agree %"], skm_seed_sweep()))
        return
    digits_steps = 20 if args.quick else args.digits_steps
    mobilenet_steps = 2 if args.quick else args.mobilenet_steps
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = train_digits_cnn()
        torch.save(reference.state_dict(), work / "digits.pt")
        _, _, xt, yt = digits_data()
        print(f"digits CNN: fp32 held-out accuracy {100 * fidelity(reference(xt).detach(), reference, xt, yt)['accuracy']:.1f}%")
        results = [spawn({"model": "digits", "algo": algo, "bits": bits, "steps": digits_steps,
                          "threads": args.threads}, work)
                   for bits in (2, 3) for algo in ("kmeans", "sensitive_kmeans", "dkm")]
        out["digits"] = results
        print("\n## digits CNN, per-tensor, all layers (held-out 500 images)\n")
        print(fmt(results, with_accuracy=True))
        if not args.skip_sweep:
            rows = [] if args.quick else skm_sweep(reference)
            out["skm_sweep"] = rows
            if rows:
                print("\n## SKM vs k-means over 8 calibration sets/seeds (digits, held-out KL ratio SKM/k-means)\n")
                print(format_table(["bits", "Fisher temperature", "SKM wins", "geo-mean ratio", "worst ratio"], rows))
        if not args.skip_mobilenet:
            from bitsmith_zoo.data import image_crops

            n_cal, n_test = (32, 16) if args.quick else (256, 128)
            torch.save({"calibration": image_crops(n_cal, "calibration"), "heldout": image_crops(n_test, "heldout")},
                       work / "crops.pt")
            jobs = [{"model": "mobilenet_v2", "algo": algo, "bits": bits, "steps": mobilenet_steps,
                     "threads": args.threads}
                    for bits in (2, 3, 4) for algo in ("kmeans", "sensitive_kmeans", "dkm")
                    if not (algo == "dkm" and bits == 4)]
            results = [spawn(job, work) for job in jobs]
            out["mobilenet_v2"] = results
            print(f"\n## MobileNetV2, one LUT per 8 output channels, layers >= 2048 weights "
                  f"({n_test} held-out crops)\n")
            print(fmt(results, with_accuracy=False))
        if not args.skip_memory:
            jobs = [{"model": "synthetic25m", "mode": mode, "iterations": iterations, "threads": args.threads,
                     "device": args.memory_device}
                    for mode, iterations in (("plain", 0), ("dkm", 0), ("dkm_memory_saving", 0), ("dkm", 1),
                                             ("dkm_memory_saving", 1))]
            results = [spawn(job, work) for job in jobs]
            out["memory_25m"] = results
            plain = results[0]["step_peak_mib"]
            rows = [(r["mode"], r["iterations"], r["weights"], round(r.get("prepare_peak_mib", 0.0), 1),
                     round(r["step_peak_mib"], 1), round(r["step_peak_mib"] / plain, 2), round(r["step_seconds"], 2))
                    for r in results]
            print(f"\n## One training step, 4 x Linear(2500, 2500) = 25M weights, 4-bit DKM ({args.memory_device})\n")
            print(format_table(["mode", "iterations", "weights", "prepare peak MiB", "step peak MiB",
                                "x plain step", "step s"], rows, align="lrrrrrr"))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
