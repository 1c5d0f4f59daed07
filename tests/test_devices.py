"""bitsmith.devices: one check and one wording for every ``device=`` argument."""

from __future__ import annotations

import pytest
import torch

from bitsmith.devices import resolve_device, same_device
from bitsmith.errors import ConfigError


@pytest.mark.parametrize("given, expected", [
    (None, None), ("cpu", torch.device("cpu")), (torch.device("cpu"), torch.device("cpu")),
    ("cpu:0", torch.device("cpu", 0)),
])
def test_usable_devices(given, expected):
    assert resolve_device(given) == expected


@pytest.mark.parametrize("given, message", [
    ("gpu0", r"^device: 'gpu0' is not a torch device \(Invalid device string: 'gpu0'\)$"),
    (0, r"^device: expected a device name such as 'cpu' or 'cuda', or a torch.device; got 0$"),
    ("meta", r"^device: 'meta' tensors hold no values to compute with"),
    pytest.param("xpu", r"^device: 'xpu' is not usable in this torch build \(.+\)$",
                 marks=pytest.mark.skipif(hasattr(torch, "xpu") and torch.xpu.is_available(), reason="XPU present")),
])
def test_bad_devices_name_the_option_and_the_value(given, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(given)
    with pytest.raises(ConfigError, match=message.replace("^device:", "^fisher_device:")):
        resolve_device(given, "fisher_device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"^device: '{name}' asked for, but torch.cuda.is_available\(\) is False$"):
            resolve_device(name)


def test_same_device():
    cpu = torch.device("cpu")
    assert same_device(cpu, cpu) and same_device(cpu, torch.device("cpu:0"))
    assert same_device(torch.device("cuda", 1), torch.device("cuda")) and not same_device(None, cpu)
    assert not same_device(torch.device("cuda", 0), torch.device("cuda", 1))
    assert not same_device(cpu, torch.device("cuda"))
