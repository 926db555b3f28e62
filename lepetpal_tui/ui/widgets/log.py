"""Event log: engine events (with their fix) and UI notes, newest at the bottom."""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import RichLog

from lepetpal_tui.wire import EngineEvent

_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}


class EventLog(RichLog):
    def __init__(self, t0: float, *, id: str | None = None) -> None:
        super().__init__(max_lines=1000, markup=True, wrap=True, id=id)
        self.t0 = t0
        self.count = 0

    def on_mount(self) -> None:
        self.border_title = "Log"

    def add(self, t: float, level: str, message: str, fix: str = "") -> None:
        self.count += 1
        style = _STYLE.get(level, "")
        stamp = f"[dim]{max(0.0, t - self.t0):7.1f}s[/]"
        body = escape(message)
        line = f"{stamp} [{style}]{body}[/]" if style else f"{stamp} {body}"
        if fix:
            line += f"  [yellow]→ {escape(fix)}[/]"
        self.write(line)

    def add_event(self, e: EngineEvent) -> None:
        self.add(e.t, e.level, e.message, e.fix)
