"""Latency pane: inference time per chunk and the control tick period, with current / p50 / p99."""

from __future__ import annotations

import math
from typing import Any

from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.strip import Strip
from textual.widgets import Sparkline, Static

from lepetpal_tui.ui.store import Stats, TelemetryStore

MIN_INTERVAL_S = 0.5  # 2 Hz is plenty for latency figures; joints and banner redraw faster
# The tick sparkline shifts with every tick, so each update repaints all its cells (an escape sequence
# each: about 8 KiB at 120x40). Once a second shows the trend; the figures above it update at 2 Hz.
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Textual keeps each rendered line until the data changes; so do we (source strip -> stepped).
        self._stepped: dict[int, tuple[Strip, Strip]] = {}
        self._styles: dict[tuple[Style, Style | None, Style | None], Style | None] = {}

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        hit = self._stepped.get(y)
        if hit is not None and hit[0] is strip:
            return hit[1]
        lo = self.get_component_rich_style("sparkline--min-color")
        hi = self.get_component_rich_style("sparkline--max-color")
        # Blank cells keep their own style: only the bars are on the ramp.
        out = Strip(
            [Segment(t, st if t.isspace() or st is None else self._step(st, lo, hi), c) for t, st, c in strip],
            strip.cell_length,
        ).simplify()
        if len(self._stepped) > 64:
            self._stepped.clear()
        self._stepped[y] = (strip, out)
        return out

    def _step(self, style: Style, lo: Style, hi: Style) -> Style | None:
        key = (style, lo, hi)
        if key in self._styles:
            return self._styles[key]
        out: Style | None = style
        if style.color is not None and lo.color is not None and hi.color is not None:
            a, b, c = lo.color.get_truecolor(), hi.color.get_truecolor(), style.color.get_truecolor()
            span = [b[i] - a[i] for i in range(3)]
            axis = max(range(3), key=lambda i: abs(span[i]))
            if span[axis]:
                frac = min(1.0, max(0.0, (c[axis] - a[axis]) / span[axis]))
                k = round(frac * (COLOR_STEPS - 1)) / (COLOR_STEPS - 1)
                rgb = tuple(round(a[i] + k * span[i]) for i in range(3))
                out = style + Style(color=RichColor.from_rgb(*rgb))
        if len(self._styles) > 1024:
            self._styles.clear()
        self._styles[key] = out
        return out


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
        # Re-rendering a sparkline (Textual blends a colour per bar per row) costs a few ms: at most once a
        # second each, and the inference one only when a chunk arrived.
        if now is None or now - self._sparkline_at >= TICK_SPARKLINE_S:
            self._sparkline_at = now if now is not None else self._sparkline_at
            inference = list(store.inference_ms)
            spark = self.query_one("#latency-inference", Sparkline)
            if spark.data != inference:
                spark.data = inference
            self.query_one("#latency-tick", Sparkline).data = list(store.tick_periods_ms)[-120:]
        starved = f"[b red]{store.starved_ticks}[/]" if store.starved_ticks else "0"
        tick = store.latest_tick
        speed = 1.0 if tick is None else tick.speed
        # Below 1 the plan plays slower because inference cannot keep up (see [control] min_speed).
        shown = f"[b yellow]{speed:.2f}x[/]" if speed < 0.995 else f"{speed:.2f}x"
        # clamps: joint goals the safety filter changed (one tick can clamp several joints), as the
        # headless progress line and `lepetpal log summary` count them.
        self._set_text(
            "latency-counters",
            f"starved {starved}   clamps {store.clamp_count}   e-stops {store.estop_count}"
            f"   ticks {store.tick_count}   speed {shown}"
        )
