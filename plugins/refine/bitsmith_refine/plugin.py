"""Entry point of bitsmith-refine: registers the ``"refine"`` palettizer."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def palettizer(register):
    """Register ``"refine"``: :class:`~bitsmith_refine.palettizer.RefinePalettizer`."""
    from .palettizer import RefinePalettizer

    register("refine", RefinePalettizer)
