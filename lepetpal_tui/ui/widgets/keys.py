"""Every key, on as many lines as it takes: the footer for terminals too narrow for Textual's one-row
Footer (which cuts the last keys off below about 120 columns, 80x24 included)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

KEY_STYLE = "bold #ffa62b"  # Textual's footer key colour


class KeysBar(Widget):
    """The app's shown bindings as `key description` pairs; a line breaks between pairs, never inside."""

    DEFAULT_CSS = "KeysBar { height: auto; max-height: 3; padding: 0 1; background: $footer-background; }"

    def _pairs(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for binding in self.app.BINDINGS:
            if isinstance(binding, tuple) or not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            out.append((binding.key_display or binding.key, binding.description))
        return out

    def _lines(self, width: int) -> list[list[tuple[str, str]]]:
        lines: list[list[tuple[str, str]]] = [[]]
        used = 0
        for key, desc in self._pairs():
            need = len(key) + 1 + len(desc) + (2 if lines[-1] else 0)
            if lines[-1] and used + need > width:
                lines.append([])
                used, need = 0, need - 2
            lines[-1].append((key, desc))
            used += need
        return lines

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Text:
        text = Text(no_wrap=True)
        for n, line in enumerate(self._lines(self.size.width)):
            if n:
                text.append("\n")
            for i, (key, desc) in enumerate(line):
                text.append(("  " if i else "") + key, style=KEY_STYLE)
                text.append(f" {desc}")
        return text
