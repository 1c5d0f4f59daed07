"""``bitsmith compress PIPELINE.yaml``: run a compression pipeline, write its artifacts and report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..safe_yaml import short


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``compress`` subcommand."""
    p = subparsers.add_parser(
        "compress", help="run a pipeline YAML: palettize/quantize/mixed-precision, export, report",
        description="Run every step of a pipeline file (see docs/pipelines.md) and write the exported "
                    "artifacts plus report.json and report.txt into the output folder. A pipeline file "
                    "runs the code its model:/data: entries name, like a Makefile.")
    p.add_argument("pipeline", help="pipeline YAML/JSON file")
    p.add_argument("-o", "--output-dir", help="output folder (default: the file's output_dir, else artifacts/<stem>)")
    p.add_argument("--check", action="store_true", help="only validate the file against the installed plugins")
    p.add_argument("--overwrite", action="store_true", help="replace files an earlier run left in the output folder")
    p.add_argument("--strict", action="store_true",
                   help="config keys (module names, regexes, types) that match no module are errors, not warnings")
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="also import model/data modules from DIR (appended after the installed packages; "
                        "repeatable); nothing else is added to sys.path")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step progress lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate (and unless ``--check``, run) the pipeline; 2 on an invalid file, 0 on success."""
    from ..pipeline import compress, load_pipeline
    from ..pipeline.imports import extra_sys_path

    with extra_sys_path(args.path):
        try:
            config = load_pipeline(Path(args.pipeline))  # always a file, whatever its suffix
        except ConfigError as exc:
            print(f"{args.pipeline}: invalid pipeline", file=sys.stderr)
            for line in exc.lines:
                print(f"  {short(line, 2000)}", file=sys.stderr)
            return 2
        if args.check:
            print(f"{args.pipeline}: ok ({len(config.steps)} steps)")
            return 0
        echo = (lambda _line: None) if args.quiet or args.json else (lambda line: print(line, flush=True))
        result = compress(None, Path(args.pipeline), output_dir=args.output_dir, progress=False if args.no_progress else None,
                          echo=echo, overwrite=args.overwrite, strict=args.strict)
    if args.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    else:
        print()
        print(result.report)
        print(f"\nwrote {', '.join(str(p) for p in result.artifacts)}")
    return 0
