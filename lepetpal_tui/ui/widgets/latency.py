"""Latency pane: inference time per chunk and the control tick period, with current / p50 / p99."""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Vertical
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


class LatencyPane(Vertical):
    def __init__(self, rate_hz: float, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rate_hz = rate_hz
        self._version = -1
        self._drawn_at = 0.0
        self._sparkline_at = -TICK_SPARKLINE_S

    def compose(self) -> ComposeResult:
        yield Static(stats_line("inference/chunk", Stats.of([])), id="latency-inference-stats")
        yield Sparkline([], summary_function=max, id="latency-inference")
        yield Static(stats_line("tick period", Stats.of([])), id="latency-tick-stats")
        yield Sparkline([], summary_function=max, id="latency-tick")
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
        self.query_one("#latency-inference-stats", Static).update(
            stats_line("inference/chunk", store.inference_stats())
        )
        self.query_one("#latency-tick-stats", Static).update(stats_line("tick period", store.tick_stats()))
        self.query_one("#latency-inference", Sparkline).data = list(store.inference_ms)
        if now is None or now - self._sparkline_at >= TICK_SPARKLINE_S:
            self._sparkline_at = now if now is not None else self._sparkline_at
            self.query_one("#latency-tick", Sparkline).data = list(store.tick_periods_ms)[-120:]
        starved = f"[b red]{store.starved_ticks}[/]" if store.starved_ticks else "0"
        tick = store.latest_tick
        speed = 1.0 if tick is None else tick.speed
        # Below 1 the plan plays slower because inference cannot keep up (see [control] min_speed).
        shown = f"[b yellow]{speed:.2f}x[/]" if speed < 0.995 else f"{speed:.2f}x"
        self.query_one("#latency-counters", Static).update(
            f"starved {starved}   clamped {store.clamp_count}   e-stops {store.estop_count}"
            f"   ticks {store.tick_count}   speed {shown}"
        )
