"""Opt-in import folders for ``model:``/``data:`` references (``python_path:`` and the CLI's ``--path``).

bitsmith never puts the current folder or a pipeline file's folder on ``sys.path`` by
itself: a package directory that happens to sit there would shadow an installed
library and run its ``__init__``. Folders the user names are appended *after* the
installed packages, for as long as the ``with`` block runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator

__all__ = ["extra_sys_path"]


@contextlib.contextmanager
def extra_sys_path(folders: Iterable[str | os.PathLike[str]]) -> Iterator[list[str]]:
    """Append ``folders`` (made absolute) to ``sys.path`` inside the block; remove what was added after.

    Folders already on ``sys.path`` are left where they are. Yields the folders added.
    """
    added = []
    for folder in folders:
        path = os.path.abspath(os.fspath(folder))
        if path not in sys.path:
            sys.path.append(path)
            added.append(path)
    try:
        yield added
    finally:
        for path in added:
            if path in sys.path:
                sys.path.remove(path)
