"""Joints pane: six gauges with the measured position, the (would-be) target, limits, clamps, health."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from lepetpal_tui.settings import JOINT_NAMES, SafetySettings
from lepetpal_tui.wire import ServoHealth, TickSample

NAME_W = 14
NUM_W = 7


def gauge(lo: float, hi: float, measured: float | None, goal: float | None, width: int, clamped: bool) -> Text:
    """A track from lo to hi with ● at the measured value and ◆ at the goal (red when clamped)."""
    width = max(width, 5)
    cells = ["─"] * width

    def cell(v: float) -> int:
        frac = (min(max(v, lo), hi) - lo) / (hi - lo) if hi > lo else 0.0
        return min(width - 1, max(0, round(frac * (width - 1))))

    text = Text()
    marks: dict[int, tuple[str, str]] = {}
    if lo < 0 < hi:
        marks[cell(0.0)] = ("┼", "dim")
    if goal is not None and math.isfinite(goal):
        marks[cell(goal)] = ("◆", "bold red" if clamped else "bold cyan")
    if measured is not None and math.isfinite(measured):
        marks[cell(measured)] = ("●", "bold white")
    for i, ch in enumerate(cells):
        if i in marks:
            text.append(marks[i][0], style=marks[i][1])
        else:
            text.append(ch, style="grey50")
    return text


class JointsPane(Widget):
    """Draws from the latest tick; `show` is called by the app's refresh timer."""

    DEFAULT_CSS = "JointsPane { height: auto; }"

    def __init__(
        self, limits: dict[str, tuple[float, float]], safety: SafetySettings, *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.limits = limits
        self.safety = safety
        self.tick: TickSample | None = None
        self.health: dict[str, ServoHealth] = {}
        self.dry_run = False

    def on_mount(self) -> None:
        self.border_title = "Joints"
        self.border_subtitle = "● measured  ◆ target  ! clamped  °C load"

    def show(self, tick: TickSample | None, health: tuple[ServoHealth, ...], dry_run: bool) -> None:
        self.tick = tick
        self.health = {h.joint: h for h in health}
        self.dry_run = dry_run
        self.refresh()

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return len(JOINT_NAMES)

    def render(self) -> Text:
        width = self.size.width
        show_health = width >= 70
        fixed = NAME_W + 2 * 5 + 2 * NUM_W + 3 + (12 if show_health else 0)
        track = max(8, width - fixed)
        out = Text(no_wrap=True, overflow="crop")
        for i, name in enumerate(JOINT_NAMES):
            lo, hi = self.limits.get(name, (-100.0, 100.0))
            measured = self.tick.measured[i] if self.tick and i < len(self.tick.measured) else None
            goal = self.tick.goal[i] if self.tick and self.tick.goal and i < len(self.tick.goal) else None
            clamped = bool(self.tick and i < len(self.tick.clamped) and self.tick.clamped[i])
            out.append(f"{name:<{NAME_W}}", style="bold")
            out.append(f"{lo:>4.0f} ", style="dim")
            out.append_text(gauge(lo, hi, measured, goal, track, clamped))
            out.append(f" {hi:<4.0f}", style="dim")
            out.append(f"{measured:>{NUM_W}.1f}" if measured is not None else f"{'--':>{NUM_W}}")
            arrow_style = "yellow" if self.dry_run else "cyan"
            out.append(f"{goal:>{NUM_W}.1f}" if goal is not None else f"{'--':>{NUM_W}}", style=arrow_style)
            out.append(" ! " if clamped else "   ", style="bold red")
            if show_health:
                out.append_text(self._health_text(name))
            if i < len(JOINT_NAMES) - 1:
                out.append("\n")
        return out

    def _health_text(self, name: str) -> Text:
        h = self.health.get(name)
        if h is None:
            return Text(f"{'':>12}")
        max_t, max_l = self.safety.max_temperature_c, self.safety.max_load_pct
        t_style = "bold red" if h.temperature_c >= max_t else "yellow" if h.temperature_c >= max_t - 10 else ""
        l_style = "bold red" if h.load_pct >= max_l else "yellow" if h.load_pct >= 0.8 * max_l else ""
        text = Text()
        text.append(f"{h.temperature_c:>4.0f}°C", style=t_style)
        text.append(f"{h.load_pct:>4.0f}% ", style=l_style)
        return text
