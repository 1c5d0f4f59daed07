"""Progress bars for long work (tqdm), switchable per call and by ``BITSMITH_PROGRESS=0``."""

from __future__ import annotations

import os
import sys
from typing import Optional

from tqdm.auto import tqdm


def progress_enabled(enabled: Optional[bool] = None) -> bool:
    """Resolve a per-call switch: explicit value, else ``BITSMITH_PROGRESS``, else "stderr is a terminal"."""
    if enabled is not None:
        return enabled
    env = os.environ.get("BITSMITH_PROGRESS")
    if env is not None:
        return env not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def progress_bar(*, total: int, desc: str, unit: str = "it", enabled: Optional[bool] = None) -> tqdm:
    """A tqdm bar on stderr, disabled unless :func:`progress_enabled`."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled), leave=False,
                dynamic_ncols=True)
