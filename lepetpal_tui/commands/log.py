"""`lepetpal log summary FILE`: figures from a session log (JSON Lines written by the engine)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HELP = "summarise a session log: duration, ticks, starved ticks, clamps, e-stops, latency figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    p = sub.add_parser("summary", help="print the summary of one session log")
    p.add_argument("file", metavar="FILE", help="a logs/session-*.jsonl file (or a folder: its newest log)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _resolve(path: Path) -> Path | None:
    if path.is_dir():
        logs = sorted(path.glob("session-*.jsonl"), key=lambda p: p.stat().st_mtime)
        return logs[-1] if logs else None
    return path


def run(args: argparse.Namespace) -> int:
    from lepetpal_tui.engine.session_log import LogError, summarize

    given = Path(args.file).expanduser()
    path = _resolve(given)
    if path is None:
        print(f"lepetpal log: {given} holds no session-*.jsonl logs. Pass a log file or the logs folder.",
              file=sys.stderr)
        return 2
    try:
        summary = summarize(path)
    except LogError as exc:
        print(f"lepetpal log: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = dataclasses.asdict(summary)
        data["header"] = {k: v for k, v in summary.header.items() if k != "settings"}
        print(json.dumps(data, indent=2))
        return 0
    print(f"session log {path}")
    for line in summary.lines():
        print("  " + line)
    return 0
