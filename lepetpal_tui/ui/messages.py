"""Messages the engine worker posts to the app (past tense: they report what happened)."""

from __future__ import annotations

from textual.message import Message

from lepetpal_tui.wire import PortInfo


class TelemetryArrived(Message):
    """New batches are waiting in the app's inbox. Carries no data, so a burst coalesces into one."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TelemetryArrived)


class EngineStarted(Message):
    """The engine link is up (the sim, when used, is running on `port`)."""

    def __init__(self, port: str) -> None:
        super().__init__()
        self.port = port


class EngineFailed(Message):
    """The engine could not start, or it vanished; `reason` and `fix` are shown to the operator."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__()
        self.reason = reason
        self.fix = fix


class EngineClosed(Message):
    """The engine was shut down on request (quit or reconnect)."""


class PortsListed(Message):
    """A port scan finished."""

    def __init__(self, ports: list[PortInfo], error: str = "") -> None:
        super().__init__()
        self.ports = ports
        self.error = error
