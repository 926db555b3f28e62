"""`lepetpal ui` (also `lepetpal` with no command): the full-screen operator interface.

Only the settings are resolved here; textual is imported when the app starts, and torch / lerobot
never in this process (the engine process loads them), so the first screen appears at once.
"""

from __future__ import annotations

import argparse
import sys

from lepetpal_tui.cli import settings_from_args

HELP = "open the full-screen operator interface (the default command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-connect", dest="no_connect", action="store_true", default=False,
        help="open without starting the engine; pick a port in the Port pane and press Connect",
    )
    # Benchmark / demo aid: invented telemetry, no engine, no arm. Hidden from --help on purpose.
    parser.add_argument("--fake-telemetry", dest="fake_telemetry", type=float, default=0.0,
                        help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        print(
            "lepetpal: the interface needs an interactive terminal (stdin and stdout are not a TTY). "
            "Run it from a terminal or over `ssh -t`, or use `lepetpal run` for a headless session.",
            file=sys.stderr,
        )
        return 2
    import dataclasses

    from lepetpal_tui.ui.graphics import resolve_camera_mode

    # Before Textual owns the terminal: "auto" may ask it whether it draws Kitty graphics or Sixel.
    camera = resolve_camera_mode(settings.ui.camera)
    settings = dataclasses.replace(settings, ui=dataclasses.replace(settings.ui, camera=camera))  # type: ignore[arg-type]
    from lepetpal_tui.ui.app import LePetPalApp

    kwargs: dict[str, object] = {}
    if getattr(args, "fake_telemetry", 0.0):
        from lepetpal_tui.ui.synthetic_link import SyntheticLink

        rate = float(args.fake_telemetry)
        kwargs = {"link_factory": lambda _s, _p: SyntheticLink(rate_hz=rate), "sim_factory": None}
    app = LePetPalApp(settings, autoconnect=not getattr(args, "no_connect", False), **kwargs)  # type: ignore[arg-type]
    result = app.run()
    return int(result or 0)
