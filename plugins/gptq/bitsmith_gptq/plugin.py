"""Entry point of bitsmith-gptq: registers the ``"gptq"`` palettizer."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def palettizer(register):
    """Register ``"gptq"``: :class:`~bitsmith_gptq.GPTQPalettizer`."""
    from .palettizer import GPTQPalettizer

    register("gptq", GPTQPalettizer)
