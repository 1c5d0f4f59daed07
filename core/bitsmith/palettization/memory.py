"""Copying a model for compression without copying the tensors that compression replaces."""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn


def copy_for_compression(model: nn.Module, replaced: Iterable[torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose ``replaced`` tensors share storage with the original.

    Every other parameter, buffer and attribute is copied as ``copy.deepcopy`` does.
    Each replaced tensor gets a new ``Parameter`` (or plain tensor) object in the copy
    over the *same* storage, so the copy costs nothing for them until the caller
    swaps in new values with ``tensor.data = new`` (which changes the copy only).
    Writing into them in place (``copy_``) would change ``model`` too: callers must
    only reassign ``.data``. Tied tensors stay tied in the copy.
    """
    memo: dict[int, object] = {}
    for tensor in replaced:
        if id(tensor) not in memo:
            shared = tensor.detach()
            memo[id(tensor)] = (nn.Parameter(shared, requires_grad=tensor.requires_grad)
                                if isinstance(tensor, nn.Parameter) else shared)
    return copy.deepcopy(model, memo)
