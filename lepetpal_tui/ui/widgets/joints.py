"""Joints pane: six gauges with the measured position, the (would-be) target, the plan ahead, limits,
clamps and health. The plan ahead (the goals of the next ~1.5 s after the safety filter, from the
engine) is drawn on each track as dots up to ◇, where the joint will be, with that value in its own
column: the operator sees where the arm is about to go before it goes."""

from __future__ import annotations

import math

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from lepetpal_tui.settings import JOINT_NAMES, SafetySettings
from lepetpal_tui.ui.partial_updates import cell_spans
from lepetpal_tui.wire import ServoHealth, TickSample

NAME_W = 14
NUM_W = 7
MUTED = "grey58"  # the limits and the zero mark: a colour, not "dim" (an extra SGR code per cell run)

Run = tuple[str, str]
"""A piece of a row: its text and a rich style name. Rows are built as runs, not rich Text: rendering
six Texts through the console cost ~2 ms a redraw, most of a frame's work."""


def gauge(
    lo: float, hi: float, measured: float | None, goal: float | None, width: int, clamped: bool,
    plan: tuple[float, ...] = (),
) -> list[Run]:
    """A track from lo to hi with ● at the measured value, ◆ at the goal (red when clamped) and the plan
    ahead as · up to ◇ (its last goal)."""
    width = max(width, 5)
    cells = ["─"] * width

    def cell(v: float) -> int:
        frac = (min(max(v, lo), hi) - lo) / (hi - lo) if hi > lo else 0.0
        return min(width - 1, max(0, round(frac * (width - 1))))

    runs: list[Run] = []
    marks: dict[int, tuple[str, str]] = {}
    if lo < 0 < hi:
        marks[cell(0.0)] = ("┼", MUTED)
    if plan and all(math.isfinite(v) for v in plan):
        start = cell(goal) if goal is not None and math.isfinite(goal) else cell(plan[0])
        end = cell(plan[-1])
        for i in range(min(start, end), max(start, end) + 1):
            marks[i] = ("·", "cyan")
        marks[end] = ("◇", "bold cyan")
    if goal is not None and math.isfinite(goal):
        marks[cell(goal)] = ("◆", "bold red" if clamped else "bold cyan")
    if measured is not None and math.isfinite(measured):
        marks[cell(measured)] = ("●", "bold white")
    # One span per run of equal style: a span per cell costs an escape sequence per cell over SSH.
    run, run_style = "", ""
    for i, ch in enumerate(cells):
        glyph, style = marks.get(i, (ch, "grey50"))
        if style != run_style and run:
            runs.append((run, run_style))
            run = ""
        run += glyph
        run_style = style
    if run:
        runs.append((run, run_style))
    return runs


class JointsPane(Widget):
    """Six gauge rows from the latest tick, drawn through Textual's line API.

    Why the line API and cell spans: at 12 redraws a second, rendering the pane as one Text cost about
    8 ms a frame (rich Text -> Content -> strips for all six rows), and refreshing whole rows sent every
    cell with its style (about 600 bytes a row, 43 KiB/s over SSH). Each row is now kept as a Strip, and
    only the cells that changed (a moved marker, a new number) are refreshed: the compositor sends just
    the segments under those spans."""

    DEFAULT_CSS = "JointsPane { height: auto; text-wrap: nowrap; text-overflow: clip; }"

    tick: reactive[TickSample | None] = reactive(None, repaint=False)
    """The newest control tick (measured joints, goal, clamps)."""
    health: reactive[tuple[ServoHealth, ...]] = reactive((), repaint=False)
    dry_run: reactive[bool] = reactive(False, repaint=False)
    plan: reactive[tuple[tuple[float, ...], ...]] = reactive((), repaint=False)
    """The plan ahead: goals over the next ~1.5 s, oldest first (() while holding)."""

    def __init__(
        self, limits: dict[str, tuple[float, float]], safety: SafetySettings, *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.limits = limits
        self.safety = safety
        self._strips: list[Strip] = []
        self._cells: list[list[tuple[str, str]]] = []
        self._style_of: dict[str, Style] = {}
        self._batching = False

    def on_mount(self) -> None:
        self.border_title = "Joints"
        self.border_subtitle = "● measured  ◆ target  ◇ in 1.5 s  ! clamped  °C load"

    def show(
        self, tick: TickSample | None, health: tuple[ServoHealth, ...], dry_run: bool,
        plan: tuple[tuple[float, ...], ...] = (),
    ) -> None:
        self._batching = True  # one row update for the four assignments
        try:
            self.tick = tick
            self.health = health
            self.dry_run = dry_run
            self.plan = plan
        finally:
            self._batching = False
        self._update_rows()

    def _watch_any(self) -> None:
        if not self._batching:
            self._update_rows()

    watch_tick = watch_health = watch_dry_run = watch_plan = _watch_any

    def on_resize(self) -> None:
        self._strips, self._cells = [], []
        self._update_rows()
        self.refresh()

    def _update_rows(self) -> None:
        width = self.size.width
        if width <= 0 or not self.is_mounted:
            return
        rows = self._render_rows(width)
        strips = [Strip([Segment(t, self._style(st)) for t, st in row]).crop_extend(0, width, None) for row in rows]
        cells = [_cells_of(row, width) for row in rows]
        old = self._cells
        self._strips, self._cells = strips, cells
        if len(old) != len(cells):
            self.refresh()
            return
        for y, (a, b) in enumerate(zip(old, cells, strict=True)):
            changed = range(max(len(a), len(b))) if len(a) != len(b) else (
                x for x, (ca, cb) in enumerate(zip(a, b, strict=True)) if ca != cb)
            for x0, x1 in cell_spans(changed):
                self.refresh(Region(x0, y, x1 - x0, 1))

    def _style(self, name: str) -> Style:
        style = self._style_of.get(name)
        if style is None:
            style = self._style_of[name] = Style.parse(name) if name else Style.null()
        return style

    def render_line(self, y: int) -> Strip:
        if not self._strips:
            self._update_rows()
        if 0 <= y < len(self._strips):
            return self._strips[y].apply_style(self.rich_style)
        return Strip.blank(self.size.width, self.rich_style)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return len(JOINT_NAMES)

    def _render_rows(self, width: int) -> list[list[Run]]:
        # Columns in the order they give way on a narrow pane: health, the plan's end value (its ◇ stays
        # on the track), then the limits (the track's ends); the track keeps at least 10 cells.
        show_health = show_limits = show_plan = True

        def fixed() -> int:
            return (NAME_W + 2 * NUM_W + 3 + (12 if show_health else 0) + (10 if show_limits else 0)
                    + (NUM_W if show_plan else 0))

        for drop in ("health", "plan", "limits"):
            if width - fixed() >= 10 + 6 * (drop == "health"):
                break
            show_health = show_health and drop != "health"
            show_limits = show_limits and drop != "limits"
            show_plan = show_plan and drop != "plan"
        track = max(10, width - fixed())
        rows: list[list[Run]] = []
        # Reactives are read once: each read is a descriptor call, and the plan is read per joint.
        tick, plans, dry_run = self.tick, self.plan, self.dry_run
        health = {h.joint: h for h in self.health}
        for i, name in enumerate(JOINT_NAMES):
            out: list[Run] = []
            lo, hi = self.limits.get(name, (-100.0, 100.0))
            measured = tick.measured[i] if tick and i < len(tick.measured) else None
            goal = tick.goal[i] if tick and tick.goal and i < len(tick.goal) else None
            clamped = bool(tick and i < len(tick.clamped) and tick.clamped[i])
            out.append((f"{name:<{NAME_W}}", "bold"))
            if show_limits:
                out.append((f"{lo:>4.0f} ", MUTED))
            plan = tuple(g[i] for g in plans if i < len(g))
            out.extend(gauge(lo, hi, measured, goal, track, clamped, plan))
            if show_limits:
                out.append((f" {hi:<4.0f}", MUTED))
            out.append((f"{measured:>{NUM_W}.1f}" if measured is not None else f"{'--':>{NUM_W}}", ""))
            arrow_style = "yellow" if dry_run else "cyan"
            out.append((f"{goal:>{NUM_W}.1f}" if goal is not None else f"{'--':>{NUM_W}}", arrow_style))
            if show_plan:
                out.append((f"{plan[-1]:>{NUM_W}.1f}" if plan else f"{'':>{NUM_W}}", "bold cyan"))
            out.append((" ! " if clamped else "   ", "bold red"))
            if show_health:
                out.extend(self._health_runs(health.get(name)))
            rows.append(out)
        return rows

    def _health_runs(self, h: ServoHealth | None) -> list[Run]:
        if h is None:
            return [(f"{'':>12}", "")]
        max_t, max_l = self.safety.max_temperature_c, self.safety.max_load_pct
        t_style = "bold red" if h.temperature_c >= max_t else "yellow" if h.temperature_c >= max_t - 10 else ""
        l_style = "bold red" if h.load_pct >= max_l else "yellow" if h.load_pct >= 0.8 * max_l else ""
        return [(f"{h.temperature_c:>4.0f}°C", t_style), (f"{h.load_pct:>4.0f}% ", l_style)]


def _cells_of(row: list[Run], width: int) -> list[tuple[str, str]]:
    """The row as one (character, style) pair per cell, cut or padded to the pane: what the diff compares.
    (Every character in a row is one cell wide.)"""
    cells = [(ch, style) for text, style in row for ch in text][:width]
    return cells + [(" ", "")] * (width - len(cells))
