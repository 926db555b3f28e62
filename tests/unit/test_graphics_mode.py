"""Camera drawing mode: only terminals known for graphics are asked; everything else gets half blocks."""

from __future__ import annotations

from lepetpal_tui.ui.graphics import resolve_camera_mode, terminal_may_draw_graphics


def test_plain_terminals_are_not_asked() -> None:
    assert not terminal_may_draw_graphics({"TERM": "xterm-256color", "COLORTERM": "truecolor"})
    assert not terminal_may_draw_graphics({"TERM": "tmux-256color"})
    assert terminal_may_draw_graphics({"TERM": "xterm-kitty"})
    assert terminal_may_draw_graphics({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"})


def test_modes() -> None:
    plain = {"TERM": "xterm-256color"}
    assert resolve_camera_mode("auto", plain, is_tty=True) == "halfblock"
    assert resolve_camera_mode("auto", {"TERM": "xterm-kitty"}, is_tty=False) == "halfblock"  # no terminal
    assert resolve_camera_mode("off", plain, is_tty=True) == "off"
    assert resolve_camera_mode("halfblock", {"TERM": "xterm-kitty"}, is_tty=True) == "halfblock"
