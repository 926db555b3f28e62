"""A small modal that asks before something consequential (re-arm, quit while moving)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[str | None]):
    """Returns the id of the chosen choice, or None on Escape. Each choice is (id, key, label)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "choose('')", "Cancel", show=False)]

    def __init__(self, title: str, body: str, choices: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.choices = choices
        for choice_id, key, _label in choices:
            self._bindings.bind(key, f"choose('{choice_id}')", show=False)

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            yield Static(f"[b]{self.title_text}[/]", id="confirm-title")
            yield Static(self.body, id="confirm-body")
            with Horizontal(id="confirm-buttons"):
                for i, (choice_id, key, label) in enumerate(self.choices):
                    yield Button(
                        f"{label} ({key})", id=f"choice-{choice_id}", variant="warning" if i == 0 else "default",
                        compact=True,
                    )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_choose((event.button.id or "").removeprefix("choice-"))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
