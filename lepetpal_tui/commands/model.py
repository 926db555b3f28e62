"""`lepetpal model check PATH_OR_REPO`: will this checkpoint drive the configured arm?

Loads the checkpoint (downloading it when it is a hub repo id), runs the preflight checks against the
configured arm units and cameras, runs one inference on a synthetic observation and prints what it found.
Exit 0 when it fits, 2 with the reasons when it does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import TextIO

from lepetpal_tui.cli import settings_flags_parser, settings_from_args
from lepetpal_tui.wire import ModelStatus, PreflightCheck

HELP = "check a SmolVLA checkpoint against the configured arm and cameras (model check PATH_OR_REPO)"
EXIT_MISFIT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")
    # Settings flags (--device, --config, ...) are accepted after `check` too.
    check = sub.add_parser("check", parents=[settings_flags_parser()], help="load a checkpoint, run the preflight checks and one inference",
                           description="Load a checkpoint (local folder or hub repo id), check it against "
                           "the configured arm units and cameras, run one inference and print sizes, "
                           "cameras, device, dtype, parameters and timings.")
    check.add_argument("target", metavar="PATH_OR_REPO", nargs="?", default=None,
                       help="checkpoint folder or hub repo id (default: [model] path, or the demo checkpoint)")
    check.add_argument("--revision", default=None, help="hub branch, tag or commit (default: [model] revision)")
    check.add_argument("--dtype", choices=["auto", "fp32", "bf16", "int8"], default=None, help="override [model] dtype")
    check.add_argument("--flow-steps", type=int, default=None,
                       help="override the checkpoint's num_steps (default: [model] flow_steps, else the checkpoint's)")


class _Printer:
    """Prints each phase once, and download progress at most every half second."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last_phase = ""
        self.last_print = 0.0
        self.final: ModelStatus | None = None

    def __call__(self, status: ModelStatus) -> None:
        self.final = status
        now = time.monotonic()
        if status.phase == "downloading":
            recent = now - self.last_print < 0.5
            if status.phase == self.last_phase and recent and status.bytes_done < status.bytes_total:
                return
            pct = 100.0 * status.bytes_done / status.bytes_total if status.bytes_total else 0.0
            print(f"  downloading {status.current_file or '...'}: {status.bytes_done / 1e6:.1f}/"
                  f"{status.bytes_total / 1e6:.1f} MB ({pct:.0f}%)", file=self.out)
        elif (status.phase != self.last_phase or status.phase == "loading") and (
            status.message and status.phase not in ("failed", "ready")
        ):
            print(f"  {status.phase}: {status.message}", file=self.out)
        self.last_phase, self.last_print = status.phase, now


def _print_checks(checks: tuple[PreflightCheck, ...], out: TextIO) -> None:
    if not checks:
        return
    print("preflight:", file=out)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}", file=out)
        if not c.ok and c.fix:
            print(f"       {'':<{width}}  fix: {c.fix}", file=out)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "model_command", None) != "check":
        print("lepetpal model: choose an action, e.g. `lepetpal model check lerobot/smolvla_base` or "
              "`lepetpal model check ./my-checkpoint`.", file=sys.stderr)
        return EXIT_MISFIT
    settings = settings_from_args(args)
    changes: dict[str, object] = {"fallback_to_scripted": False, "mode": "smolvla"}
    if args.target is not None:
        changes["path"] = args.target
    if args.revision is not None:
        changes["revision"] = args.revision
    if args.dtype is not None:
        changes["dtype"] = args.dtype
    if args.flow_steps is not None:
        if not 1 <= args.flow_steps <= 100:
            print("lepetpal: --flow-steps must be between 1 and 100.", file=sys.stderr)
            return EXIT_MISFIT
        changes["flow_steps"] = args.flow_steps
    model = dataclasses.replace(settings.model, **changes)  # type: ignore[arg-type]
    out = sys.stdout
    print(f"checking {model.path or '(built-in demo checkpoint)'} against arm units \"{settings.arm.units}\" "
          f"and cameras {', '.join(settings.cameras) or '(none)'}", file=out)

    from lepetpal_tui.policy.load import PolicyCancelled, PolicyError, load_policy

    printer = _Printer(out)
    t0 = time.perf_counter()
    try:
        policy = load_policy(model, settings.cameras, settings.arm.units, printer, rate_hz=settings.control.rate_hz)
    except PolicyCancelled:
        print("lepetpal: cancelled", file=sys.stderr)
        return 130
    except PolicyError as exc:
        if printer.final is not None:
            _print_checks(printer.final.preflight, out)
        print(f"\nDOES NOT FIT: {exc.message}", file=out)
        if exc.fix:
            print(f"fix: {exc.fix}", file=out)
        return EXIT_MISFIT
    load_s = time.perf_counter() - t0
    final = printer.final
    assert final is not None  # load_policy always reports "ready" before returning
    _print_checks(final.preflight, out)

    from lepetpal_tui.policy.smolvla import warmup_observation

    obs = warmup_observation(tuple(settings.cameras), task="pick up the cube")
    try:
        chunk = policy.infer(obs)
    except PolicyError as exc:
        print(f"\nDOES NOT FIT: the test inference failed: {exc.message}\nfix: {exc.fix}", file=out)
        return EXIT_MISFIT
    a = chunk.actions
    cams = getattr(policy, "cameras", ())
    cam_map = ", ".join(f"{o}->{model.camera_map.get(o, o)}" for o in settings.cameras)
    lines = [
        ("checkpoint", final.source),
        ("cameras", f"checkpoint: {', '.join(cams)}; ours: {cam_map}"),
        ("state / action size", "6 / 6"),
        ("device / dtype", f"{policy.device} / {policy.dtype}  ({final.message.removeprefix('ready: ')})"),
        ("parameters", f"{policy.parameters:,}"),
        ("chunk", f"{a.shape[0]} actions x {a.shape[1]} joints"),
        ("flow steps", str(getattr(policy, "flow_steps_note", "n/a"))),
        ("load + warm-up", f"{load_s:.2f} s (first inference {final.warmup_s or 0.0:.3f} s)"),
        ("inference", f"{chunk.timing.total_s * 1000:.0f} ms (pre {chunk.timing.preprocess_s * 1000:.1f}, "
                      f"model {chunk.timing.model_s * 1000:.1f}, post {chunk.timing.postprocess_s * 1000:.1f})"),
        ("action range", "  ".join(f"[{lo:.0f},{hi:.0f}]" for lo, hi in zip(a.min(0), a.max(0), strict=True))),
    ]
    width = max(len(k) for k, _ in lines)
    print("", file=out)
    for k, v in lines:
        print(f"{k:<{width}}  {v}", file=out)
    print("\nFITS: the checkpoint matches the configured arm and cameras.", file=out)
    return 0
