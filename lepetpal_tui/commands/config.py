"""`lepetpal config`: print the resolved settings and where each value came from."""

from __future__ import annotations

import argparse
import json

from lepetpal_tui.cli import settings_from_args
from lepetpal_tui.settings import flatten, origin_of

HELP = "print the resolved settings and where each value came from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    rows = [(key, value, origin_of(settings, key)) for key, value in flatten(settings)]
    if args.json:
        print(json.dumps({k: {"value": v, "origin": o} for k, v, o in rows}, indent=2, default=list))
        return 0
    print(f"settings file: {settings.source_path or '(none: built-in defaults)'}")
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        shown = json.dumps(value, default=list)
        print(f"{key:<{width}}  {shown:<40}  {origin}")
    return 0
