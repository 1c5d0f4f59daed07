"""``bitsmith config validate FILE`` and ``bitsmith config show-defaults``."""

from __future__ import annotations

import argparse
import sys

from ..config import KMeansPalettizerConfig, QuantizerConfig, dump, load
from ..errors import ConfigError

DEFAULTS = {"palettization": KMeansPalettizerConfig, "quantization": QuantizerConfig}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``config`` subcommand group."""
    p = subparsers.add_parser("config", help="validate configs, show defaults")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    v = sub.add_parser("validate", help="load a YAML/JSON config; print it normalized or the errors (exit 2)")
    v.add_argument("file")
    v.set_defaults(func=validate)
    d = sub.add_parser("show-defaults", help="print the default config as YAML")
    d.add_argument("--kind", choices=sorted(DEFAULTS), default="palettization")
    d.set_defaults(func=show_defaults)


def validate(args: argparse.Namespace) -> int:
    """Print the normalized config, or every error with its dotted path."""
    try:
        config: object = load(args.file if args.file.endswith((".yaml", ".yml", ".json")) else _read(args.file))
    except ConfigError as exc:
        print(f"{args.file}: invalid config", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return 2
    print(dump(config), end="")
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def show_defaults(args: argparse.Namespace) -> int:
    """Print ``KMeansPalettizerConfig()`` (or ``QuantizerConfig()``) as YAML."""
    print(dump(DEFAULTS[args.kind]()), end="")
    return 0
