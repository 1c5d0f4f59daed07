"""``bitsmith plugins [--json]``: every discovered plugin, what it registered, and load errors."""

from __future__ import annotations

import argparse
import json

from .. import plugins as registry_module
from ..hookspecs import HOOK_NAMES
from ..table import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``plugins`` subcommand."""
    p = subparsers.add_parser("plugins", help="list plugins: dist, version, hooks, names, load errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the plugin table (or JSON); exit code 0 even when some plugin failed."""
    registry = registry_module.default_registry()
    records = registry.plugins()
    if args.json:
        payload = {"plugins": [r.as_dict() for r in records],
                   "names": {kind: registry.names(kind) for kind in HOOK_NAMES}}
        print(json.dumps(payload, indent=2))
        return 0
    if not records:
        print("no plugins installed (pip install bitsmith-kmeans, bitsmith-metrics, ...)")
        return 0
    rows = []
    for r in records:
        hooks = "; ".join(f"{k}: {', '.join(v)}" for k, v in r.registered.items()) or "-"
        rows.append((r.name, r.dist or "-", r.version or "-", hooks if r.ok else f"FAILED: {r.error}"))
    print(format_table(["plugin", "dist", "version", "registered"], rows, align="llll"))
    return 0
