"""Latency pane: inference time per chunk and the control tick period, with current / p50 / p99."""

from __future__ import annotations

import math

from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.strip import Strip
from textual.widgets import Sparkline, Static

from lepetpal_tui.ui.store import Stats, TelemetryStore

MIN_INTERVAL_S = 0.25  # 4 Hz is plenty for latency history; joints and banner redraw faster
# The tick sparkline shifts with every tick, so each update repaints all its cells (an escape sequence
# each: about 8 KiB at 120x40). Once a second shows the trend; the figures above it update at 4 Hz.
TICK_SPARKLINE_S = 1.0


def fmt_ms(v: float) -> str:
    return "--" if math.isnan(v) else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def stats_line(label: str, s: Stats) -> str:
    return (
        f"[b]{label}[/]  now [b]{fmt_ms(s.current)}[/] ms  p50 {fmt_ms(s.p50)}  p99 {fmt_ms(s.p99)}"
    )


COLOR_STEPS = 4  # the sparkline's colour ramp, quantized: runs of bars share one escape sequence


class SteppedSparkline(Sparkline):
    """Textual's Sparkline with its colour ramp cut into COLOR_STEPS steps.

    Why: every bar of the stock widget has its own blended true colour, so each repaint sends an escape
    sequence per cell (about 1.6 KiB for a 40-cell row). With a few steps, neighbouring bars share a
    style and merge into one segment; a spike still shows in the max colour."""

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        lo = self.get_component_rich_style("sparkline--min-color").color
        hi = self.get_component_rich_style("sparkline--max-color").color
        if lo is None or hi is None:
            return strip.simplify()
        a, b = lo.get_truecolor(), hi.get_truecolor()
        span = [b[i] - a[i] for i in range(3)]
        axis = max(range(3), key=lambda i: abs(span[i]))
        cache: dict[Style, Style] = {}

        def stepped(style: Style | None) -> Style | None:
            if style is None or style.color is None or span[axis] == 0:
                return style
            if (hit := cache.get(style)) is not None:
                return hit
            c = style.color.get_truecolor()
            frac = min(1.0, max(0.0, (c[axis] - a[axis]) / span[axis]))
            k = round(frac * (COLOR_STEPS - 1)) / (COLOR_STEPS - 1)
            rgb = tuple(round(a[i] + k * span[i]) for i in range(3))
            out = cache[style] = style + Style(color=RichColor.from_rgb(*rgb))
            return out

        # Blank cells keep their own style: only the bars are on the ramp.
        return Strip(
            [Segment(t, st if t.isspace() else stepped(st), c) for t, st, c in strip], strip.cell_length
        ).simplify()


class LatencyPane(Vertical):
    def __init__(self, rate_hz: float, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rate_hz = rate_hz
        self._version = -1
        self._drawn_at = 0.0
        self._sparkline_at = -TICK_SPARKLINE_S
        self._texts: dict[str, str] = {}

    def _set_text(self, widget_id: str, text: str) -> None:
        """Update a one-line Static only when its text changed, and without a layout pass: by default
        `Static.update` re-lays-out the screen, and at 4 Hz for three lines that was a reflow (and a
        repaint of every pane) several times a second. These lines have a fixed height (app.tcss)."""
        if self._texts.get(widget_id) != text:
            self._texts[widget_id] = text
            self.query_one(f"#{widget_id}", Static).update(text, layout=False)

    def compose(self) -> ComposeResult:
        yield Static(stats_line("inference/chunk", Stats.of([])), id="latency-inference-stats")
        yield SteppedSparkline([], summary_function=max, id="latency-inference")
        yield Static(stats_line("tick period", Stats.of([])), id="latency-tick-stats")
        yield SteppedSparkline([], summary_function=max, id="latency-tick")
        yield Static("", id="latency-counters")

    def on_mount(self) -> None:
        self.border_title = "Latency"
        self.border_subtitle = f"target tick {1000.0 / self.rate_hz:.1f} ms"

    def show(self, store: TelemetryStore, now: float | None = None) -> None:
        """Redraw from the store; with `now`, at most every MIN_INTERVAL_S (sparklines are costly to paint)."""
        if store.version == self._version:
            return
        if now is not None and now - self._drawn_at < MIN_INTERVAL_S:
            return
        self._drawn_at = now if now is not None else 0.0
        self._version = store.version
        self._set_text("latency-inference-stats", stats_line("inference/chunk", store.inference_stats()))
        self._set_text("latency-tick-stats", stats_line("tick period", store.tick_stats()))
        inference = list(store.inference_ms)
        spark = self.query_one("#latency-inference", Sparkline)
        if spark.data != inference:
            spark.data = inference
        if now is None or now - self._sparkline_at >= TICK_SPARKLINE_S:
            self._sparkline_at = now if now is not None else self._sparkline_at
            self.query_one("#latency-tick", Sparkline).data = list(store.tick_periods_ms)[-120:]
        starved = f"[b red]{store.starved_ticks}[/]" if store.starved_ticks else "0"
        tick = store.latest_tick
        speed = 1.0 if tick is None else tick.speed
        # Below 1 the plan plays slower because inference cannot keep up (see [control] min_speed).
        shown = f"[b yellow]{speed:.2f}x[/]" if speed < 0.995 else f"{speed:.2f}x"
        self._set_text(
            "latency-counters",
            f"starved {starved}   clamped {store.clamp_count}   e-stops {store.estop_count}"
            f"   ticks {store.tick_count}   speed {shown}"
        )
