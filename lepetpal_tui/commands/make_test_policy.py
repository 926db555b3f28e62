"""`lepetpal make-test-policy DIR`: build a tiny SmolVLA checkpoint offline (random weights)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HELP = "build a tiny SmolVLA checkpoint offline (random weights, real format) for tests and demos"
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="folder to write the checkpoint into (created)")
    parser.add_argument("--camera", action="append", dest="cameras", metavar="NAME",
                        help="camera name the checkpoint expects (repeat for several; default: front)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")


def run(args: argparse.Namespace) -> int:
    cameras = args.cameras or ["front"]
    bad = [c for c in cameras if not _NAME_RE.match(c)]
    if bad:
        print(f"lepetpal: camera name(s) {', '.join(map(repr, bad))} are not valid: use letters, digits and "
              "underscores (they become observation.images.<name>).", file=sys.stderr)
        return 2
    target = Path(args.dir).expanduser()
    if target.exists() and not target.is_dir():
        print(f"lepetpal: {target} is a file; give a folder path for the checkpoint.", file=sys.stderr)
        return 2
    from lepetpal_tui.policy.demo_checkpoint import BUILD_MARKER, build_test_policy

    # Only a folder this command built before may be written over: anything else there (a fine-tuned
    # checkpoint above all) would be replaced by random weights.
    if target.is_dir() and any(target.iterdir()) and not (target / BUILD_MARKER).is_file():
        what = "holds a checkpoint that make-test-policy did not build" if (target / "config.json").is_file() \
            else "is not empty"
        print(f"lepetpal: {target} {what}; it is left as it is. Choose an empty or new folder.", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = build_test_policy(target, camera_names=tuple(cameras), seed=args.seed)
    except OSError as exc:
        print(f"lepetpal: cannot write the checkpoint to {target} ({exc.strerror or exc}). Choose a folder you "
              "can write to, with about 5 MB free.", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"tiny SmolVLA checkpoint written to {out} ({size / 1e6:.1f} MB, cameras: {', '.join(cameras)}, "
          f"{time.perf_counter() - t0:.1f} s)")
    print(f"use it with: lepetpal --sim --model-path {out}")
    return 0
