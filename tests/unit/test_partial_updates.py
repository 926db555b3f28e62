"""The cropped partial updates (ui/partial_updates.py) paint the same screen as Textual's own, with fewer bytes.

The real operator screen runs on invented telemetry (gauges, sparklines, counters all moving). Every
update the compositor sends is rendered twice, with Textual's stock `render_segments` and with ours,
into two terminal emulators (pyte). At the end both terminals must equal a full render of the screen, cell by
cell, colours included, and ours must have written less.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pyte
import pytest
from textual._compositor import ChopsUpdate, CompositorUpdate, LayoutUpdate
from textual.app import App

from lepetpal_tui.settings import load_settings
from lepetpal_tui.ui import partial_updates
from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.ui.synthetic_link import SyntheticLink

COLS, ROWS = 120, 40


def _terminal() -> tuple[pyte.Screen, pyte.Stream]:
    screen = pyte.Screen(COLS, ROWS)
    return screen, pyte.Stream(screen)


def _cells(screen: pyte.Screen) -> list[list[tuple[str, str, str, bool]]]:
    return [[(c.data, c.fg, c.bg, c.bold) for c in (screen.buffer[y][x] for x in range(COLS))] for y in range(ROWS)]


def test_cropped_updates_paint_the_same_screen_with_fewer_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    partial_updates.uninstall()
    stock = ChopsUpdate.render_segments
    stock_term, stock_stream = _terminal()
    ours_term, ours_stream = _terminal()
    written = {"stock": 0, "ours": 0, "partial": 0}  # bytes of the partial updates; their count

    def display(self: App[Any], screen: Any, update: Any) -> None:
        if not isinstance(update, CompositorUpdate):
            return
        if isinstance(update, ChopsUpdate):
            a, b = stock(update, self.console), partial_updates.render_segments_cropped(update, self.console)
            written["partial"] += 1
            written["stock"] += len(a)
            written["ours"] += len(b)
        else:
            a = b = update.render_segments(self.console)
        stock_stream.feed(a)
        ours_stream.feed(b)

    monkeypatch.setattr(App, "_display", display)
    # The app installs the cropped method itself; keep the stock one so both can be compared.
    monkeypatch.setattr(partial_updates, "install", lambda: False)

    Cells = list[list[tuple[str, str, str, bool]]]

    def quiet_poll(timeout: float) -> list[Any]:
        time.sleep(timeout)
        return []

    async def run() -> tuple[Cells, Cells, Cells]:
        link = SyntheticLink(rate_hz=30)
        app = LePetPalApp(load_settings(None), link_factory=lambda _s, _p: link, sim_factory=None, animations=False)
        async with app.run_test(size=(COLS, ROWS)) as pilot:
            await pilot.pause(0.5)
            await pilot.press(*"watch", "enter")
            await pilot.pause(2.5)
            # Telemetry stops, every pending repaint reaches the terminals, then the full render is taken.
            monkeypatch.setattr(link, "poll", quiet_poll)
            await pilot.pause(1.0)
            full_term, full_stream = _terminal()
            compositor = app.screen._compositor
            full_stream.feed(LayoutUpdate([[s] for s in compositor.render_strips()], compositor.size.region)
                             .render_segments(app.console))
            at_full = (_cells(full_term), _cells(stock_term), _cells(ours_term))
            await pilot.press("ctrl+q")
            return at_full

    full, stock_cells, ours_cells = asyncio.run(run())
    assert written["partial"] > 20, "the screen sent few partial updates: the test watched nothing move"
    assert stock_cells == full
    assert ours_cells == full
    assert written["ours"] < 0.6 * written["stock"], written


def test_install_is_idempotent_and_reversible() -> None:
    partial_updates.uninstall()
    stock = ChopsUpdate.render_segments
    assert partial_updates.install()
    assert partial_updates.install()
    assert ChopsUpdate.render_segments is partial_updates.render_segments_cropped
    partial_updates.uninstall()
    assert ChopsUpdate.render_segments is stock


def test_cell_spans_merge_only_near_neighbours() -> None:
    assert partial_updates.cell_spans([]) == []
    assert partial_updates.cell_spans([5]) == [(5, 6)]
    # 2..4 and 6 are fewer than SPAN_GAP apart: one span; 20 is far: a span of its own
    assert partial_updates.cell_spans([2, 3, 4, 6, 20]) == [(2, 7), (20, 21)]
    far = 5 + partial_updates.SPAN_GAP  # SPAN_GAP unchanged cells (5 .. far-1) between them: not merged
    assert partial_updates.cell_spans([4, far]) == [(4, 5), (far, far + 1)]
    assert partial_updates.cell_spans([4, far - 1]) == [(4, far)]
