"""Partial screen updates that start where the change starts, not at the widget's left edge.

Why: Textual's line API lets a widget refresh a region as small as one cell, and the compositor keeps
those spans (`ChopsUpdate.spans`). Its fast path to the terminal, `ChopsUpdate.render_segments`, then
crops each widget's line at the span's end but not at its start: every partial update resends the line
from the widget's left edge (Textual issue #5625). For this screen that was most of the traffic over
SSH: a joint gauge whose marker moved resent its whole row (~550 bytes, 12 times a second, six rows),
and a camera frame resent every row of the picture up to the last changed cell.

`install()` replaces that method with one that also skips, at the start, the whole segments that end
before the span. It cuts only between segments, as Textual's own `ChopsUpdate.__rich_console__` does,
so no character (a wide one included) is ever split, and the cells it writes are exactly the cells the
stock method writes minus a prefix that did not change. `tests/unit/ui/test_partial_updates.py` checks
this on a terminal emulator (pyte): the screen built from the updates equals a full render.

Installed only for the Textual versions it was checked against; on any other, Textual's own method
stays (the screen is right either way, only heavier).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.control import Control

CHECKED_TEXTUAL = ("8.",)  # ChopsUpdate's fields (chops, spans, chop_ends) as of Textual 8.2

SPAN_GAP = 4  # changed cells closer than this are refreshed as one span: a cursor move costs ~8 bytes

_stock: Any = None


def cell_spans(columns: Iterable[int]) -> list[tuple[int, int]]:
    """Changed columns (ascending) as [x0, x1) spans to refresh, neighbours fewer than SPAN_GAP cells
    apart merged. The joints pane and the camera pane refresh what they changed through this."""
    spans: list[tuple[int, int]] = []
    for x in columns:
        if spans and x - spans[-1][1] < SPAN_GAP:
            spans[-1] = (spans[-1][0], x + 1)
        else:
            spans.append((x, x + 1))
    return spans


def render_segments_cropped(self: Any, console: Console) -> str:
    """`ChopsUpdate.render_segments`, cropped on the left at the first segment the span touches."""
    sequences: list[str] = []
    append = sequences.append
    move_to = Control.move_to
    chops = self.chops
    chop_ends = self.chop_ends
    last_y = self.spans[-1][0]

    for y, x1, x2 in self.spans:
        line = chops[y]
        ends = chop_ends[y]
        for end, (x, strip) in zip(ends, line.items(), strict=False):
            if strip is None:
                continue
            if x > x2 or end <= x1:
                continue
            if x2 > x >= x1 and end <= x2:
                append(move_to(x, y).segment.text)
                append(strip.render(console))
                continue
            start = x
            if x < x1:
                for segment in strip:
                    width = cell_len(segment.text)
                    if start + width > x1:
                        break
                    start += width
            strip = strip.crop(start - x, min(end, x2) - x)
            append(move_to(start, y).segment.text)
            append(strip.render(console))

        if y != last_y:
            append("\n")

    return "".join(sequences)


def install() -> bool:
    """Use the cropped method for every partial update of this process; True when installed."""
    global _stock
    import textual
    from textual._compositor import ChopsUpdate

    if _stock is not None:
        return True
    version = getattr(textual, "__version__", "")
    if not version.startswith(CHECKED_TEXTUAL) or not hasattr(ChopsUpdate, "render_segments"):
        return False
    _stock = ChopsUpdate.render_segments
    ChopsUpdate.render_segments = render_segments_cropped  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """Put Textual's own method back (tests compare the two)."""
    global _stock
    from textual._compositor import ChopsUpdate

    if _stock is not None:
        ChopsUpdate.render_segments = _stock  # type: ignore[method-assign]
        _stock = None
