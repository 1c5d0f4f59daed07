"""A small EDSR-style x2 super-resolution network, trained on the fly and cached.

Architecture (Lim et al., 2017, "EDSR baseline" shrunk): a 3x3 head conv, ``n_blocks``
residual blocks (conv-ReLU-conv, no batch norm, residual scaling), a body conv with
a long skip, a PixelShuffle upsampler and a 3x3 tail conv. With
``global_residual=True`` (default) the network predicts a correction that is added
to a bicubic upsampling of its input, so a briefly trained model already beats
bicubic interpolation. The default 8 blocks x 32 features has ~0.2 M parameters.

No pretrained SR weights ship offline, so :func:`train_edsr` trains the network for
500 Adam steps on random 48x48 patches of the calibration photos of
:mod:`bitsmith_zoo.data` (HR patches; LR = antialiased bicubic downscale), which
takes under a minute on two idle CPU cores, and caches the state dict under
:func:`bitsmith_zoo._assets.cache_dir` (``$BITSMITH_ZOO_CACHE`` or
``~/.cache/bitsmith-zoo``), keyed by configuration, steps and seed. Evaluation pairs
(:func:`edsr_eval_pairs`) come from the held-out photos, disjoint from training.

Images are float ``(B, 3, H, W)`` tensors in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith_zoo._assets import cache_dir
from bitsmith_zoo.data import CALIBRATION_IMAGES, HELDOUT_IMAGES, load_image

__all__ = [
    "EDSR",
    "EDSRConfig",
    "ResBlock",
    "bicubic_upscale",
    "downscale",
    "edsr_eval_pairs",
    "evaluate_edsr",
    "load_edsr",
    "psnr",
    "train_edsr",
]

# Bump when the training recipe changes, so stale cached weights are not reused.
_RECIPE_VERSION = 1


@dataclass(frozen=True)
class EDSRConfig:
    """Hyper-parameters of :class:`EDSR`.

    Attributes:
        scale: upscaling factor (2 or 4; 4 uses two PixelShuffle(2) stages).
        n_blocks: number of residual blocks.
        n_feats: feature channels.
        res_scale: multiplier of each residual branch.
        global_residual: add a bicubic upsampling of the input to the output.
    """

    scale: int = 2
    n_blocks: int = 8
    n_feats: int = 32
    res_scale: float = 1.0
    global_residual: bool = True


class ResBlock(nn.Module):
    """EDSR residual block: ``x + res_scale * conv(relu(conv(x)))`` (no batch norm).

    Args:
        n_feats: channels.
        res_scale: residual branch multiplier.
    """

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


class EDSR(nn.Module):
    """EDSR-style super-resolution network.

    Submodules: ``head`` (conv), ``body`` (``n_blocks`` :class:`ResBlock` then a
    conv; long skip around it), ``upsampler`` (conv to ``4 * n_feats`` channels +
    ``PixelShuffle(2)``, repeated log2(scale) times), ``tail`` (conv to RGB).

    Args:
        config: hyper-parameters; defaults to :class:`EDSRConfig()`.
    """

    def __init__(self, config: EDSRConfig | None = None) -> None:
        super().__init__()
        cfg = config or EDSRConfig()
        if cfg.scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {cfg.scale}")
        self.config = cfg
        f = cfg.n_feats
        self.head = nn.Conv2d(3, f, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(f, cfg.res_scale) for _ in range(cfg.n_blocks)], nn.Conv2d(f, f, 3, padding=1)
        )
        up: list[nn.Module] = []
        for _ in range(int(math.log2(cfg.scale))):
            up += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2)]
        self.upsampler = nn.Sequential(*up)
        self.tail = nn.Conv2d(f, 3, 3, padding=1)
        if cfg.global_residual:
            # Start as exact bicubic upsampling; training learns the correction.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Upscale ``(B, 3, h, w)`` to ``(B, 3, scale*h, scale*w)`` (not clamped)."""
        x = self.head(lr)
        x = x + self.body(x)
        out = self.tail(self.upsampler(x))
        if self.config.global_residual:
            out = out + F.interpolate(lr, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return out


def downscale(hr: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Make LR images: antialiased bicubic downscale by ``scale``, clamped to ``[0, 1]``.

    ``hr`` is ``(B, 3, H, W)`` or ``(3, H, W)`` with ``H, W`` divisible by ``scale``.
    """
    squeeze = hr.dim() == 3
    x = hr.unsqueeze(0) if squeeze else hr
    lr = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", align_corners=False, antialias=True)
    lr = lr.clamp(0.0, 1.0)
    return lr.squeeze(0) if squeeze else lr


def bicubic_upscale(lr: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Baseline upscaling: bicubic interpolation by ``scale``, clamped to ``[0, 1]``."""
    squeeze = lr.dim() == 3
    x = lr.unsqueeze(0) if squeeze else lr
    sr = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    return sr.squeeze(0) if squeeze else sr


def psnr(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, max_val: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between images in ``[0, max_val]``.

    ``sr`` is clamped to ``[0, max_val]`` first. The MSE is taken over all pixels
    and channels of the whole batch.

    Args:
        sr: prediction ``(..., H, W)``.
        hr: reference, same shape.
        shave: border pixels ignored on each side (SR convention: the scale).
        max_val: peak value.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    sr = sr.detach().float().clamp(0.0, max_val)
    hr = hr.detach().float()
    if shave:
        sr = sr[..., shave:-shave, shave:-shave]
        hr = hr[..., shave:-shave, shave:-shave]
    mse = torch.mean((sr - hr) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(max_val**2 / mse)


def edsr_eval_pairs(size: int = 192, scale: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out ``(LR, HR)`` pairs for evaluating super-resolution.

    Two ``size x size`` HR crops (center, and the top-left quarter point) of each
    held-out photo (:data:`bitsmith_zoo.data.HELDOUT_IMAGES`: chelsea, coffee,
    flower, motorcycle; never used for training), i.e. 8 pairs. LR images are
    :func:`downscale` of the HR ones.

    Returns:
        list of ``(lr (1, 3, size/scale, size/scale), hr (1, 3, size, size))``.
    """
    if size % scale:
        raise ValueError("size must be divisible by scale")
    pairs = []
    for name in HELDOUT_IMAGES:
        img = load_image(name)
        h, w = img.shape[-2:]
        s = min(size, h, w) // scale * scale
        for top, left in (((h - s) // 2, (w - s) // 2), ((h - s) // 4, (w - s) // 4)):
            hr = img[:, top : top + s, left : left + s].unsqueeze(0).contiguous()
            pairs.append((downscale(hr, scale), hr))
    return pairs


@torch.no_grad()
def evaluate_edsr(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
    """Mean PSNR (dB, border of ``scale`` pixels shaved) of ``model`` and of bicubic.

    Args:
        model: an SR model mapping LR to HR (e.g. :class:`EDSR`, possibly compressed).
        pairs: ``(lr, hr)`` pairs; defaults to :func:`edsr_eval_pairs`.

    Returns:
        ``{"psnr": model, "psnr_bicubic": baseline, "gain": difference}``.
    """
    pairs = pairs if pairs is not None else edsr_eval_pairs()
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    sr_scores, bic_scores = [], []
    for lr, hr in pairs:
        scale = hr.shape[-1] // lr.shape[-1]
        sr_scores.append(psnr(model(lr), hr, shave=scale))
        bic_scores.append(psnr(bicubic_upscale(lr, scale), hr, shave=scale))
    if was_training and isinstance(model, nn.Module):
        model.train()
    sr, bic = sum(sr_scores) / len(sr_scores), sum(bic_scores) / len(bic_scores)
    return {"psnr": sr, "psnr_bicubic": bic, "gain": sr - bic}


def _random_patches(
    images: list[torch.Tensor], batch: int, hr_size: int, gen: torch.Generator
) -> torch.Tensor:
    """Random HR patches with random flips and 90-degree rotations."""
    areas = torch.tensor([float(im.shape[-1] * im.shape[-2]) for im in images])
    idx = torch.multinomial(areas, batch, replacement=True, generator=gen)
    out = torch.empty(batch, 3, hr_size, hr_size)
    for b, i in enumerate(idx.tolist()):
        im = images[i]
        h, w = im.shape[-2:]
        top = int(torch.randint(0, h - hr_size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - hr_size + 1, (1,), generator=gen))
        p = im[:, top : top + hr_size, left : left + hr_size]
        aug = int(torch.randint(0, 8, (1,), generator=gen))
        if aug & 1:
            p = p.flip(-1)
        if aug & 2:
            p = p.flip(-2)
        if aug & 4:
            p = p.transpose(-1, -2)
        out[b] = p
    return out


def _cache_path(config: EDSRConfig, steps: int, seed: int, batch: int, patch: int, lr: float) -> Path:
    key = json.dumps(
        {"cfg": dataclasses.asdict(config), "steps": steps, "seed": seed, "batch": batch, "patch": patch,
         "lr": lr, "images": CALIBRATION_IMAGES, "v": _RECIPE_VERSION},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"edsr_x{config.scale}_b{config.n_blocks}_f{config.n_feats}_s{steps}_seed{seed}_{digest}.pt"
    return cache_dir() / name


def train_edsr(
    steps: int = 500,
    seed: int = 0,
    config: EDSRConfig | None = None,
    batch_size: int = 16,
    patch_size: int = 48,
    lr: float = 2e-3,
    cache: bool = True,
    verbose: bool = False,
) -> EDSR:
    """Train (or load from cache) an :class:`EDSR` on the calibration photos.

    Trains with Adam (cosine-decayed learning rate) and L1 loss on random
    ``patch_size`` HR patches (flips/rotations) of
    :data:`bitsmith_zoo.data.CALIBRATION_IMAGES`, LR made by :func:`downscale`.
    Deterministic for a given ``seed`` on a given machine and thread count.

    Args:
        steps: optimizer steps (the default takes under a minute on 2 idle CPU
            cores and gains ~1.5 dB over bicubic on :func:`edsr_eval_pairs`).
        seed: seed of initialization and patch sampling.
        config: architecture; defaults to :class:`EDSRConfig()`.
        batch_size: patches per step.
        patch_size: HR patch side (divisible by the scale).
        lr: peak learning rate.
        cache: read/write the trained state dict under the zoo cache directory,
            keyed by all of the above.
        verbose: print progress and timing.

    Returns:
        The trained model in eval mode.
    """
    cfg = config or EDSRConfig()
    if patch_size % cfg.scale:
        raise ValueError("patch_size must be divisible by the scale")
    path = _cache_path(cfg, steps, seed, batch_size, patch_size, lr) if cache else None
    model = EDSR(cfg)
    if path is not None and path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            if verbose:
                print(f"[edsr] loaded cached weights {path}")
            return model.eval()
        except (RuntimeError, OSError, EOFError):  # corrupt/incompatible cache entry: retrain
            pass

    torch.manual_seed(seed)
    model = EDSR(cfg)
    gen = torch.Generator().manual_seed(seed)
    images = [load_image(name) for name in CALIBRATION_IMAGES]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        hr = _random_patches(images, batch_size, patch_size, gen)
        loss = F.l1_loss(model(downscale(hr, cfg.scale)), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if verbose and (step % 100 == 0 or step == steps - 1):
            print(f"[edsr] step {step:5d}  l1 {loss.item():.4f}  {time.perf_counter() - start:6.1f}s")
    model.eval()
    if path is not None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: concurrent trainers never see half a file
    return model


def load_edsr(seed: int = 0, config: EDSRConfig | None = None) -> EDSR:
    """The standard trained EDSR (:func:`train_edsr` defaults), from cache when possible."""
    return train_edsr(seed=seed, config=config)
