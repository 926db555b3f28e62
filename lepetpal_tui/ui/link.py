"""The UI's view of the engine: an abstract link (spawn, send, poll, close) and the real implementation.

The app only ever talks to an `EngineLink`. The real one is the engine process client; tests and the
benchmark inject a scripted link (tests/support/scripted_link.py) or invented telemetry (synthetic_link.py). Nothing here imports torch, lerobot or textual:
the real client and the simulated arm are imported lazily, inside the worker thread that needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import Command, PortInfo, TelemetryBatch


@runtime_checkable
class EngineLink(Protocol):
    """A running engine. `send` must not block; `poll` blocks at most `timeout` seconds."""

    @property
    def alive(self) -> bool: ...

    def send(self, command: Command) -> None: ...

    def poll(self, timeout: float) -> list[TelemetryBatch]: ...

    def close(self, go_home: bool = False, timeout: float = 5.0) -> list[TelemetryBatch] | None:
        """Stop the engine safely; may return the last batches it sent."""
        ...

    # Optional: `abandon(reason: str) -> None`, the UI leaving without a quit (hangup, crash). Links
    # without it get a `ui_lost` command instead.


class SimHandle(Protocol):
    """A running simulated arm (`lepetpal_tui.sim.process.SimArm`) the UI owns (tests); by default the
    engine starts its own."""

    @property
    def port(self) -> str: ...

    def stop(self) -> None: ...


# (settings, sim_port or None) -> a started engine. Called from a worker thread: it may take seconds.
LinkFactory = Callable[[Settings, str | None], EngineLink]
SimFactory = Callable[[], SimHandle]
PortLister = Callable[[], list[PortInfo]]


def spawn_engine(settings: Settings, sim_port: str | None) -> EngineLink:
    """Start the real engine process (it alone imports torch and lerobot)."""
    from lepetpal_tui.engine.launcher import EngineClient

    client: EngineLink = EngineClient.spawn(settings, sim_port=sim_port)
    return client


def list_serial_ports() -> list[PortInfo]:
    """Probe serial ports for an SO-101 (slow: run it in a thread worker)."""
    from lepetpal_tui.arm.ports import list_ports

    ports: list[PortInfo] = list_ports()
    return ports
