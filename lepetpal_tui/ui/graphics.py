"""How the Camera pane draws pictures in this terminal, decided before Textual takes the terminal over.

Kitty's graphics protocol and Sixel show the frame at full resolution, but finding out whether a terminal
speaks them means asking it (textual-image sends a query and reads the reply from stdin), which must
happen before the app starts and costs a round trip plus the PIL import (about 0.2 s on a 2-core EPYC).
So "auto" asks only when the environment names a terminal known for one of them; everything else, and any
trouble, gets half blocks, which work in every true-colour SSH terminal. `[ui] camera = "kitty"` or
`"sixel"` forces one (and asks for the cell size the same way).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# Terminals that answer textual-image's probe with Kitty graphics or Sixel (TERM / TERM_PROGRAM values).
_GRAPHICS_TERMS = ("kitty", "ghostty", "wezterm", "foot", "mlterm", "contour", "sixel")
_GRAPHICS_PROGRAMS = ("wezterm", "ghostty", "iterm.app", "kitty", "konsole", "contour")


def terminal_may_draw_graphics(env: Mapping[str, str]) -> bool:
    """Whether the environment names a terminal worth asking about Kitty graphics or Sixel."""
    term = env.get("TERM", "").lower()
    program = env.get("TERM_PROGRAM", "").lower()
    return (
        any(t in term for t in _GRAPHICS_TERMS)
        or program in _GRAPHICS_PROGRAMS
        or bool(env.get("KITTY_WINDOW_ID"))
        or bool(env.get("KONSOLE_VERSION"))
    )


def resolve_camera_mode(mode: str, env: Mapping[str, str] | None = None, is_tty: bool | None = None) -> str:
    """"halfblock", "kitty", "sixel" or "off" for the configured `mode`; may query the terminal, so call
    it before the app runs."""
    if mode in ("off", "halfblock"):
        return mode
    env = os.environ if env is None else env
    tty = sys.stdout.isatty() and sys.stdin.isatty() if is_tty is None else is_tty
    if not tty or (mode == "auto" and not terminal_may_draw_graphics(env)):
        return "halfblock"
    try:
        import textual_image.widget  # noqa: F401  (asks for the cell size now, while it still can)
        from textual_image.renderable import Image as Detected
        from textual_image.renderable.sixel import Image as SixelRenderable
        from textual_image.renderable.tgp import Image as TGPRenderable
    except Exception:
        return "halfblock"  # not installed, or the terminal did not answer: half blocks work everywhere
    if mode in ("kitty", "sixel"):
        return mode
    if Detected is TGPRenderable:
        return "kitty"
    if Detected is SixelRenderable:
        return "sixel"
    return "halfblock"
