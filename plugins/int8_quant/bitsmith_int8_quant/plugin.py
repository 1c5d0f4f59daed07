"""Hook implementations of bitsmith-int8-quant: the ``"int8"`` quantizer and two observers."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def quantizer(register):
    """Register :class:`bitsmith_int8_quant.quantizer.Quantizer` as ``"int8"``."""
    from .quantizer import Quantizer

    register("int8", Quantizer)


@bitsmith.hookimpl
def observer(register):
    """Register the ``"min_max"`` and ``"moving_average"`` observers (classes are their own factories)."""
    from .observers import OBSERVERS

    for name, factory in OBSERVERS.items():
        register(name, factory)
