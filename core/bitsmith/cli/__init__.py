"""The ``bitsmith`` command line: ``bitsmith plugins``, ``bitsmith config ...`` and the job commands.

Each subcommand lives in its own module with an ``add_parser(subparsers)`` function
that registers its parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import BitsmithError

SUBCOMMAND_MODULES = ("plugins", "config", "mixed_precision", "compress")
"""Modules of :mod:`bitsmith.cli` whose ``add_parser`` is called, in help order."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="bitsmith", description="Compress PyTorch models for phones.")
    parser.add_argument("--version", action="version", version=f"bitsmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bitsmith`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BitsmithError as exc:
        print(f"bitsmith: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
