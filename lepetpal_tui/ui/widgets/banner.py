"""The state banner: one line no operator can miss, coloured by engine state, plus what to do next."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from lepetpal_tui.wire import EngineState

_CLASSES = {
    EngineState.DISCONNECTED: "-disconnected",
    EngineState.CONNECTING: "-connecting",
    EngineState.LOADING: "-loading",
    EngineState.READY: "-ready",
    EngineState.RUNNING: "-running",
    EngineState.DRY_RUN: "-dry-run",
    EngineState.MACRO: "-macro",
    EngineState.ESTOP: "-estop",
    EngineState.ERROR: "-error",
}

_HINTS = {
    EngineState.DISCONNECTED: "No arm. Pick a port in the Port pane and press Connect (or start with --sim).",
    EngineState.CONNECTING: "Connecting to the arm and loading the policy...",
    EngineState.LOADING: "Holding its pose while the policy loads (Model pane). Enter / F5 queues the typed task.",
    EngineState.READY: "Holding its pose. Type a task and press Enter (or F5) to start.",
    EngineState.RUNNING: "The policy is MOVING the arm.  F12 / Space = E-STOP   F6 = stop",
    EngineState.DRY_RUN: "The policy runs, the arm does NOT move (d toggles dry-run).  F12 = E-STOP",
    EngineState.MACRO: "A macro is moving the arm.  F12 / Space = E-STOP",
    EngineState.ESTOP: "Latched: nothing is written to the arm.  r = re-arm (asks first)",
    EngineState.ERROR: "Holding because of a fault: see the log for the reason and the fix.",
}

_ICONS = {
    EngineState.LOADING: "◐",
    EngineState.RUNNING: "▶",
    EngineState.DRY_RUN: "◌",
    EngineState.ESTOP: "■",
    EngineState.ERROR: "✖",
    EngineState.MACRO: "▶",
}


class StateBanner(Static):
    """Shows the engine state in large, coloured text; its CSS class follows the state."""

    def __init__(self, *, id: str | None = None) -> None:
        # What the first paint shows, before the app has a state to show (a moment later).
        super().__init__(Text.assemble((" ● STARTING ", "bold"), "\n Opening the panes...", end=""), id=id,
                         classes="-disconnected")
        self._shown: tuple[str, ...] = ()

    def show(self, state: EngineState, *, task: str = "", reason: str = "", port: str = "") -> None:
        key = (state.value, task, reason, port)
        if key == self._shown:
            return
        self._shown = key
        for cls in _CLASSES.values():
            self.remove_class(cls)
        self.add_class(_CLASSES.get(state, "-error"))
        icon = _ICONS.get(state, "●")
        text = Text()
        text.append(f" {icon} {state.value} ", style="bold")
        if port:
            text.append(f"  {port}", style="")
        if task:
            text.append(f"  task: {task}", style="italic")
        hint = _HINTS.get(state, "")
        if reason and state in (EngineState.CONNECTING, EngineState.LOADING):  # a queued start
            hint = f"{reason[0].upper()}{reason[1:]}: it starts when the policy is ready.  F6 / F12 cancels"
        if reason and state == EngineState.ESTOP:
            hint = f"{reason.rstrip('.')}.  r = re-arm (asks first)"
        elif reason and state == EngineState.ERROR:
            hint = f"{reason.rstrip('.')}.  The arm holds; see the log for the fix."
        elif reason and state == EngineState.DISCONNECTED:
            hint = f"{reason.rstrip('.')}.  {hint}"
        text.append("\n")
        text.append(f" {hint}")
        self.update(text, layout=False)  # two fixed rows (app.tcss): no reflow of the screen
