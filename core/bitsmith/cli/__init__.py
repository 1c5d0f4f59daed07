"""The ``bitsmith`` command line: ``bitsmith plugins``, ``bitsmith config ...`` and the job commands.

Each subcommand lives in its own module with an ``add_parser(subparsers)`` function
that registers its parser and sets ``func`` (``args -> exit code``).

Exit codes: 0 success; 2 a user error (bad file or flag, missing plugin, existing
output, unreadable input), printed as one message without a traceback; 1 an internal
error (a bug in bitsmith or a plugin), printed with how to report it (``-v`` adds the
traceback); 130 interrupted. ``-v`` shows INFO diagnostics of the ``bitsmith`` logger,
``-vv`` DEBUG.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Optional, Sequence

from .. import __version__
from ..errors import BitsmithError, ConfigError
from ..safe_yaml import short

SUBCOMMAND_MODULES = ("plugins", "config", "mixed_precision", "compress")
"""Modules of :mod:`bitsmith.cli` whose ``add_parser`` is called, in help order."""

USER_ERRORS = (BitsmithError, OSError, ValueError)
"""Exceptions reported as a user error (exit 2, no traceback): bitsmith's own, files, bad values."""

REPORT_HINT = ("this is a bug in bitsmith or in a plugin; please report it with the command line, the output of "
               "'bitsmith --version' and 'bitsmith plugins', and the traceback (rerun with -v to print it)")
"""What an internal error tells the user to do."""

_MESSAGE_LIMIT = 2000


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="bitsmith", description="Compress PyTorch models for phones.")
    parser.add_argument("--version", action="version", version=f"bitsmith {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="diagnostics of the 'bitsmith' logger on stderr (-v: info, -vv: debug); "
                             "tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    """Send the ``bitsmith`` logger to stderr: WARNING by default, INFO with ``-v``, DEBUG with ``-vv``."""
    logger = logging.getLogger("bitsmith")
    logger.setLevel(logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    for old in [h for h in logger.handlers if getattr(h, "_bitsmith_cli", False)]:
        logger.removeHandler(old)  # main() called again (tests, embedding): write to the current stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bitsmith: %(levelname)s: %(name)s: %(message)s"))
    handler._bitsmith_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def report_user_error(exc: BaseException) -> None:
    """Print a user error: one line (a :class:`ConfigError` adds one indented line per problem)."""
    if isinstance(exc, ConfigError) and len(exc.lines) > 1:
        print(f"bitsmith: error: {len(exc.lines)} problems", file=sys.stderr)
        for line in exc.lines:
            print(f"  {short(line, _MESSAGE_LIMIT)}", file=sys.stderr)
        return
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    print(f"bitsmith: error: {short(' '.join(text.split()), _MESSAGE_LIMIT)}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bitsmith`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bitsmith: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.verbose >= 2:
            traceback.print_exc()
        report_user_error(exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: say how to report it
        if args.verbose:
            traceback.print_exc()
        print(f"bitsmith: internal error: {type(exc).__name__}: {short(str(exc), _MESSAGE_LIMIT)}", file=sys.stderr)
        print(f"bitsmith: {REPORT_HINT}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
