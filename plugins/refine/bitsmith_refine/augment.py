"""Strongly augmented views of a few calibration photos, an endless stream of fresh batches for :func:`refine`.

A user rarely has more than a handful of calibration photos; refinement fitted to a
fixed set of crops of them learns those crops. :func:`augmented_views` draws new views
of the same photos for every step instead: random resized crops at several scales,
horizontal flips, brightness/contrast/saturation jitter, grayscale conversion and
blur, so training also sees the uncertain, unusual inputs that real traffic brings.
Pure torch (no torchvision); deterministic for a given seed.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import attrs
import torch
import torch.nn.functional as F
from attrs import define

__all__ = ["AugmentOptions", "augmented_views"]


def _probability(_inst: object, attr: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{attr.name}: expected a probability in [0, 1], got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{attr.name}: expected a non-negative number, got {value!r}")


def _area_range(_inst: object, _attr: attrs.Attribute, value: object) -> None:
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 < value[0] <= value[1] <= 1):
        raise ValueError(f"area: expected (low, high) with 0 < low <= high <= 1, got {value!r}")


@define(frozen=True, kw_only=True)
class AugmentOptions:
    """What :func:`augmented_views` varies.

    :param area: range of the crop's share of the photo's area (random resized crop;
        aspect ratio 3/4..4/3).
    :param flip: probability of a horizontal flip.
    :param jitter: strength of brightness, contrast and saturation jitter (each factor
        drawn from ``1 ± jitter``).
    :param grayscale: probability of converting the view to gray (three equal channels).
    :param blur: probability of a Gaussian blur (sigma 0.5..2 pixels).
    """

    area: tuple[float, float] = attrs.field(default=(0.08, 1.0), converter=tuple, validator=_area_range)
    flip: float = attrs.field(default=0.5, validator=_probability)
    jitter: float = attrs.field(default=0.4, validator=_non_negative)
    grayscale: float = attrs.field(default=0.2, validator=_probability)
    blur: float = attrs.field(default=0.2, validator=_probability)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1)


def _crop(image: torch.Tensor, size: int, area: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    h, w = image.shape[-2:]
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = h * w * (area[0] + (area[1] - area[0]) * u[0])
        ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * u[1])
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:  # a photo too narrow for the drawn shape: its central square
        ch = cw = min(h, w)
    top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
    window = image[:, top:top + ch, left:left + cw].unsqueeze(0)
    return F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=x.dtype) ** 2) / (2 * sigma * sigma))
    taps = taps / taps.sum()
    x = F.pad(x.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(3, 1, 1, -1).contiguous(), groups=3)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(3, 1, -1, 1).contiguous(), groups=3)[0]


def _view(image: torch.Tensor, size: int, options: AugmentOptions, gen: torch.Generator) -> torch.Tensor:
    x = _crop(image, size, options.area, gen)
    u = torch.rand(8, generator=gen).tolist()
    if u[0] < options.flip:
        x = x.flip(-1)
    if options.jitter > 0:
        brightness, contrast, saturation = (1 + options.jitter * (2 * v - 1) for v in u[1:4])
        x = x * brightness
        x = (x - x.mean()) * contrast + x.mean()
        x = (x - _gray(x)) * saturation + _gray(x)
    if u[4] < options.grayscale:
        x = _gray(x)
    if u[5] < options.blur:
        x = _blur(x, 0.5 + 1.5 * u[6])
    return x.clamp(0, 1)


def augmented_views(images: Sequence[torch.Tensor], *, batch_size: int = 16, size: int = 224, seed: int = 0,
                    options: Optional[AugmentOptions] = None,
                    normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Iterator[torch.Tensor]:
    """Endless batches of random views of ``images``, each batch drawn fresh.

    :param images: photos as float ``(3, H, W)`` tensors with pixels in ``[0, 1]``
        (each at least 2 pixels on a side).
    :param batch_size: views per batch; view ``i`` of a batch comes from photo
        ``i mod len(images)``, so every batch covers every photo.
    :param size: side of the square views in pixels.
    :param seed: seed of every random choice (same seed, same stream).
    :param options: :class:`AugmentOptions` (defaults when ``None``).
    :param normalize: applied to each batch of ``[0, 1]`` pixels (the model's input
        normalization); ``None``: pixels as they are.
    :raises ValueError: no photo, a photo that is not ``(3, H, W)`` in ``[0, 1]``, or a
        non-positive ``batch_size`` / ``size`` (raised on the call, before any batch).
    """
    options = AugmentOptions() if options is None else options
    if not isinstance(options, AugmentOptions):
        raise TypeError(f"options: expected AugmentOptions, got {type(options).__name__}")
    for name, value in (("batch_size", batch_size), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    photos = list(images)
    if not photos:
        raise ValueError("images: at least one photo is needed")
    for i, image in enumerate(photos):
        if (not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3
                or image.shape[0] != 3 or min(image.shape[1:]) < 2):
            raise ValueError(f"images[{i}]: expected a float (3, H, W) tensor, got "
                             f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
        if image.min() < 0 or image.max() > 1:
            raise ValueError(f"images[{i}]: pixels must lie in [0, 1] (got {image.min():.3g}..{image.max():.3g})")

    def stream() -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            batch = torch.stack([_view(photos[i % len(photos)].float(), size, options, gen)
                                 for i in range(batch_size)])
            yield batch if normalize is None else normalize(batch)

    return stream()
