"""Offline real photos and ImageNet-style preprocessing.

All images ship inside installed packages (scikit-image's bundled ``skimage.data``
files, scikit-learn's ``load_sample_images`` and matplotlib's sample data); nothing
is downloaded.

Calibration, held-out and broad crops come from **disjoint source images**
(the broad split contains the held-out one; neither shares a photo with calibration):

============  ==========================================================
split         source images
============  ==========================================================
calibration   ``astronaut`` (skimage, 512x512), ``rocket`` (skimage,
              427x640), ``china`` (sklearn, 427x640), ``hubble_deep_field``
              (skimage, 872x1000), ``immunohistochemistry`` (skimage,
              512x512)
heldout       ``chelsea`` (skimage, the cat, 300x451), ``coffee`` (skimage,
              a cup of espresso, 400x600), ``flower`` (sklearn, 427x640),
              ``motorcycle`` (skimage ``stereo_motorcycle`` left view,
              500x741)
broad         the four held-out photos and twelve more of other kinds:
              people (``grace_hopper``, matplotlib, color; ``camera``,
              the cameraman, grayscale), an animal silhouette (``horse``,
              binary), objects (``gift``, matplotlib's present box; ``clock``
              and ``coins``, grayscale), scenes (``moon``, grayscale;
              ``retina``, a fundus photo; ``text``, grayscale print) and
              textures (``brick``, ``grass``, ``gravel``, grayscale)
============  ==========================================================

Grayscale and binary photos are converted to RGB by repeating the channel;
photos with an alpha channel are composited over white.

``chelsea`` and ``coffee`` are held out so that classification sanity checks
(cat / espresso) never see an image the calibration set was built from.

Pixel tensors are float32 ``(3, H, W)`` in ``[0, 1]``; model inputs are normalized
with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` unless another normalization is
requested (EfficientNet-Lite expects ``"inception"``, i.e. ``(x - 0.5) / 0.5``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BROAD_IMAGES",
    "CALIBRATION_IMAGES",
    "HELDOUT_IMAGES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalization",
    "Split",
    "center_crop",
    "crop_sources",
    "image_crops",
    "image_names",
    "load_image",
    "normalize",
    "preprocess",
    "resize_shorter",
]

Split = Literal["calibration", "heldout", "broad"]
Normalization = Literal["imagenet", "inception", "none"]

#: ImageNet channel mean (RGB, for pixels in [0, 1]); torchvision convention.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviation (RGB, for pixels in [0, 1]).
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Source images of the calibration split (disjoint from :data:`HELDOUT_IMAGES`).
CALIBRATION_IMAGES: tuple[str, ...] = ("astronaut", "rocket", "china", "hubble_deep_field", "immunohistochemistry")
#: Source images of the held-out split.
HELDOUT_IMAGES: tuple[str, ...] = ("chelsea", "coffee", "flower", "motorcycle")
#: Source images of the broad evaluation split: the held-out photos and twelve of other kinds.
BROAD_IMAGES: tuple[str, ...] = HELDOUT_IMAGES + (
    "grace_hopper", "camera", "horse", "gift", "clock", "coins", "moon", "retina", "text", "brick", "grass", "gravel")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data(filename) as fh:
            return np.asarray(Image.open(fh))

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "motorcycle": _motorcycle,
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
    "gift": _matplotlib("Minduka_Present_Blue_Pack.png"),
    **{name: _skimage(name) for name in ("camera", "horse", "clock", "coins", "moon", "retina", "text", "brick",
                                         "grass", "gravel")},
}


def image_names(split: Split | None = None) -> tuple[str, ...]:
    """Names accepted by :func:`load_image`; all of them, or those of one split."""
    if split is None:
        return CALIBRATION_IMAGES + BROAD_IMAGES
    if split == "calibration":
        return CALIBRATION_IMAGES
    if split == "heldout":
        return HELDOUT_IMAGES
    if split == "broad":
        return BROAD_IMAGES
    raise ValueError(f"split must be 'calibration', 'heldout' or 'broad', got {split!r}")


@lru_cache(maxsize=None)
def _load_uint8(name: str) -> torch.Tensor:
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown image {name!r}; choose from {sorted(_LOADERS)}") from None
    try:
        arr = loader()
    except ImportError as exc:  # scikit-image / scikit-learn missing
        raise ImportError(
            f"loading sample image {name!r} needs scikit-image and scikit-learn: "
            "pip install 'bitsmith-zoo[images]'"
        ) from exc
    return torch.from_numpy(_to_rgb_uint8(np.asarray(arr))).permute(2, 0, 1).contiguous()


def _to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a grayscale, binary, RGB or RGBA (composited over white) array."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"sample image: expected uint8 or bool pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        alpha = arr[..., 3:].astype(np.float32) / 255.0
        arr = np.rint(arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.array(arr[..., :3], dtype=np.uint8, copy=True)


def load_image(name: str) -> torch.Tensor:
    """Load one bundled RGB photo as a float32 tensor ``(3, H, W)`` in ``[0, 1]``.

    Args:
        name: one of :func:`image_names` (e.g. ``"chelsea"``, ``"coffee"``).
    """
    return _load_uint8(name).float().div_(255.0)


def normalize(x: torch.Tensor, normalization: Normalization = "imagenet") -> torch.Tensor:
    """Normalize ``[0, 1]`` pixels (``(..., 3, H, W)``) for a model.

    Args:
        x: pixels in ``[0, 1]``.
        normalization: ``"imagenet"`` (mean/std of :data:`IMAGENET_MEAN` /
            :data:`IMAGENET_STD`, for MobileNetV2), ``"inception"`` (``2x - 1``,
            for EfficientNet-Lite) or ``"none"``.
    """
    if normalization == "none":
        return x
    if normalization == "inception":
        return x * 2.0 - 1.0
    if normalization != "imagenet":
        raise ValueError(f"unknown normalization {normalization!r}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = F.interpolate(x.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(0).clamp_(0.0, 1.0)


def resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(3, H, W)`` so its shorter side is ``size`` (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    return _resize(x, max(size, round(h * scale)), max(size, round(w * scale)))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Take the central ``size x size`` window of ``(3, H, W)``."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def preprocess(
    image: torch.Tensor | str,
    size: int = 224,
    resize: int = 256,
    normalization: Normalization = "imagenet",
) -> torch.Tensor:
    """Standard ImageNet evaluation transform of one image, batched.

    Resize the shorter side to ``resize``, center-crop ``size``, normalize.

    Args:
        image: a ``(3, H, W)`` tensor in ``[0, 1]`` or a name for :func:`load_image`.
        size: output crop size.
        resize: shorter side before cropping.
        normalization: see :func:`normalize`.

    Returns:
        ``(1, 3, size, size)`` float32 tensor.
    """
    x = load_image(image) if isinstance(image, str) else image
    return normalize(center_crop(resize_shorter(x, resize), size), normalization).unsqueeze(0)


def _random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random-resized crop: 10-100% of the area, aspect 3/4..4/3, optional h-flip."""
    h, w = x.shape[-2:]
    u = torch.rand(5, generator=gen).tolist()
    for _ in range(10):
        area = h * w * (0.10 + 0.90 * u[0])
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1]
        ratio = math.exp(log_ratio)
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            break
        u[0] *= 0.7  # shrink and retry
    else:  # pragma: no cover - only for degenerate tiny images
        ch = cw = min(h, w)
    top = int(u[2] * (h - ch + 1))
    left = int(u[3] * (w - cw + 1))
    crop = _resize(x[:, top : top + ch, left : left + cw], size, size)
    if u[4] < 0.5:
        crop = crop.flip(-1)
    return crop


def image_crops(
    n: int,
    split: Split = "calibration",
    size: int = 224,
    seed: int = 0,
    normalization: Normalization = "imagenet",
) -> torch.Tensor:
    """``n`` preprocessed crops of the real photos of one split.

    The first crops (one per source image, while ``n`` allows) are the standard
    evaluation view (shorter side to ``size * 8/7``, center crop). The rest are
    random-resized crops (10-100% of the image area, aspect ratio 3/4..4/3, random
    position, horizontal flip with probability 1/2), cycling through the split's
    images (:func:`crop_sources` names the photo of each crop). Calibration crops
    come from source images disjoint from the held-out and broad ones
    (:data:`CALIBRATION_IMAGES`, :data:`HELDOUT_IMAGES`, :data:`BROAD_IMAGES`). The result depends only
    on ``(n, split, size, seed, normalization)``; a larger ``n`` extends a smaller
    one (``image_crops(64)[:32] == image_crops(32)``).

    Args:
        n: number of crops (any positive number; images are reused at new views).
        split: ``"calibration"``, ``"heldout"`` or ``"broad"``.
        size: crop side in pixels.
        seed: seed of the crop geometry.
        normalization: see :func:`normalize`.

    Returns:
        float32 tensor ``(n, 3, size, size)``.
    """
    names = image_names(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = torch.empty(n, 3, size, size)
    split_salt = {"calibration": 0, "heldout": 1, "broad": 2}[split]
    for i in range(n):
        img = load_image(names[i % len(names)])
        if i < len(names):
            crop = center_crop(resize_shorter(img, round(size * 8 / 7)), size)
        else:
            gen = torch.Generator().manual_seed(((seed * 2 + split_salt) * 1_000_003 + i) & 0x7FFF_FFFF_FFFF_FFFF)
            crop = _random_crop(img, size, gen)
        out[i] = normalize(crop, normalization)
    return out


def crop_sources(n: int, split: Split = "calibration") -> tuple[str, ...]:
    """The source photo of each of the ``n`` crops :func:`image_crops` returns for ``split``."""
    names = image_names(split)
    return tuple(names[i % len(names)] for i in range(n))
