"""`lepetpal` entry point.

Each subcommand lives in `lepetpal_tui/commands/<name>.py` and exposes `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Command modules must stay light at import time (no torch, no lerobot, no textual):
`lepetpal --help` and the TUI's first screen must not wait for them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lepetpal_tui import __version__
from lepetpal_tui.settings import ConfigError, Settings, load_settings

# Subcommand name -> module under lepetpal_tui.commands, in the order --help lists them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("ui", "ui"),
    ("run", "run"),
    ("sim", "sim"),
    ("ports", "ports"),
    ("calibrate", "calibrate"),
    ("model", "model"),
    ("serve", "serve"),
    ("make-test-policy", "make_test_policy"),
    ("log", "log"),
    ("config", "config"),
)
EXIT_USAGE = 2


def settings_flags_parser() -> argparse.ArgumentParser:
    """Flags that override lepetpal.toml; accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("settings overrides (flag > environment > lepetpal.toml > default)")
    s = argparse.SUPPRESS
    g.add_argument("--config", metavar="PATH", default=s, help="settings file (default ./lepetpal.toml)")
    hw = g.add_mutually_exclusive_group()
    hw.add_argument(
        "--sim",
        dest="use_hardware",
        action="store_false",
        default=s,
        help="use the simulated arm (USE_HARDWARE=0)",
    )
    hw.add_argument(
        "--hardware",
        dest="use_hardware",
        action="store_true",
        default=s,
        help="use the real arm (USE_HARDWARE=1)",
    )
    g.add_argument("--port", default=s, help="arm serial port, 'auto' or 'sim' (ARM_PORT)")
    g.add_argument("--model-mode", choices=["smolvla", "scripted"], default=s, help="(MODEL_MODE)")
    g.add_argument("--model-path", default=s, help="hub repo id or local checkpoint (MODEL_PATH)")
    g.add_argument("--rate-hz", type=float, default=s, help="control rate (INFERENCE_RATE_HZ)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=s, help="(DEVICE)")
    g.add_argument("--policy-server", default=s, metavar="HOST:PORT",
                   help="compute chunks on a LeRobot policy server, e.g. 127.0.0.1:8080 (POLICY_SERVER)")
    g.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        default=s,
        help="run the policy without moving the arm (DRY_RUN)",
    )
    g.add_argument("--no-dry-run", dest="dry_run", action="store_false", default=s)
    g.add_argument(
        "--hf-transfer",
        dest="hf_transfer",
        action="store_true",
        default=s,
        help="faster downloads with hf_transfer (HF_HUB_ENABLE_HF_TRANSFER)",
    )
    g.add_argument("--rec", dest="recording", action="store_true", default=s,
                   help="record runs as LeRobot dataset episodes from the start (RECORD)")
    g.add_argument("--no-rec", dest="recording", action="store_false", default=s)
    g.add_argument("--rec-root", dest="record_root", metavar="DIR", default=s,
                   help="folder of the recorded dataset (RECORD_ROOT)")
    return p


_FLAG_KEYS = {
    "port": "arm.port",
    "model_mode": "model.mode",
    "model_path": "model.path",
    "rate_hz": "control.rate_hz",
    "device": "model.device",
    "dry_run": "control.dry_run",
    "hf_transfer": "model.hf_transfer",
    "policy_server": "model.server",
    "recording": "recording.enabled",
    "record_root": "recording.root",
}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Resolve settings for a command; raises ConfigError (printed by `main`, exit code 2)."""
    flags: dict[str, Any] = {key: getattr(args, attr, None) for attr, key in _FLAG_KEYS.items()}
    flags["use_hardware"] = getattr(args, "use_hardware", None)
    return load_settings(getattr(args, "config", None), flags)


def _load_command(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"lepetpal_tui.commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"lepetpal_tui.commands.{module}":
            return None  # not built yet in this checkout
        raise


def build_parser() -> argparse.ArgumentParser:
    common = settings_flags_parser()
    parser = argparse.ArgumentParser(
        prog="lepetpal",
        description="Run a SmolVLA policy on an SO-101 arm from the terminal. With no command, opens the TUI.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"lepetpal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        module = _load_command(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner = getattr(args, "_run", None)
    if runner is None:
        ui = _load_command("ui")
        if ui is None:
            parser.print_help()
            return EXIT_USAGE
        ui_parser = argparse.ArgumentParser(add_help=False)
        ui.add_arguments(ui_parser)
        for action in ui_parser._actions:
            if not hasattr(args, action.dest):
                setattr(args, action.dest, action.default)
        runner = ui.run
    try:
        return int(runner(args))
    except ConfigError as exc:
        print(f"lepetpal: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `lepetpal config | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("lepetpal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
