"""Task pane: the instruction given to the policy. Enter starts the policy, or changes the running task."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Static


class TaskPane(Horizontal):
    class TaskSubmitted(Message):
        def __init__(self, task: str) -> None:
            super().__init__()
            self.task = task

    def compose(self) -> ComposeResult:
        yield Static("Task ›", id="task-label")
        yield Input(
            placeholder="type what the arm should do, Enter to start (Esc leaves the field)",
            id="task-input",
            compact=True,
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        task = event.value.strip()
        if task:
            self.post_message(self.TaskSubmitted(task))
        else:
            self.app.notify("Type a task first, e.g. 'pick up the red cube'.", severity="warning")
