"""Enter while the policy loads: the real app on the real engine (in this process, on the simulated arm),
with a policy load the test holds back. The start is queued, runs once the policy is ready, and an e-stop
during the wait cancels it (checked on the simulator's packet trace)."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.settings import Settings
from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.wire import Command, EngineState, Heartbeat, ModelStatus, TelemetryBatch, command_name

pytestmark = pytest.mark.slow
SIZE = (120, 40)


class InProcessEngine:
    """The real Engine as the app's EngineLink, without the process boundary."""

    def __init__(self, engine: Engine, batches: queue.SimpleQueue[TelemetryBatch]) -> None:
        self.engine = engine
        self._batches = batches
        self.sent: list[Command] = []

    @property
    def alive(self) -> bool:
        return not self.engine.finished

    def send(self, command: Command) -> None:
        self.sent.append(command)
        self.engine.submit(command)

    def poll(self, timeout: float) -> list[TelemetryBatch]:
        try:
            out = [self._batches.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self._batches.empty():
            out.append(self._batches.get())
        return out

    def close(self, go_home: bool = False, timeout: float = 5.0) -> list[TelemetryBatch]:
        self.engine.close(go_home, timeout)
        return []


def _engine(sim_arm: Any, tmp_path: Path, gate: threading.Event) -> tuple[Settings, InProcessEngine]:
    from lepetpal_tui.arm.adapter import Arm
    from lepetpal_tui.policy.load import PolicyCancelled, load_policy

    base = Settings()
    settings = dataclasses.replace(
        base, model=dataclasses.replace(base.model, mode="scripted"),
        logging=dataclasses.replace(base.logging, dir=str(tmp_path / "logs")),
    )

    def policy_factory(on_status: Callable[[ModelStatus], None], cancel: threading.Event) -> Any:
        on_status(ModelStatus("loading", source="scripted", message="held back by the test"))
        while not gate.wait(0.05):
            if cancel.is_set():
                raise PolicyCancelled("cancelled")
        return load_policy(settings.model, settings.cameras, settings.arm.units, on_status, cancel)

    batches: queue.SimpleQueue[TelemetryBatch] = queue.SimpleQueue()
    engine = Engine(
        settings,
        arm_factory=lambda: Arm(settings.arm, sim_arm.port, settings.safety, is_sim=True),
        policy_factory=policy_factory,
        on_telemetry=batches.put,
    )
    engine.start()
    return settings, InProcessEngine(engine, batches)


def _goal_writes(trace: list[Any]) -> list[float]:
    return [r.t for r in trace if r.direction == "rx" and r.register == "Goal_Position"]


async def _until(pilot: Any, pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(0.05)
    store = pilot.app.store
    raise AssertionError(f"timed out waiting for {what}: the app shows {store.state} ({store.hold_reason!r})")


def _run(sim_arm: Any, tmp_path: Path, body: Callable[[Any, LePetPalApp, InProcessEngine, threading.Event],
                                                       Any]) -> None:
    gate = threading.Event()
    settings, link = _engine(sim_arm, tmp_path, gate)
    app = LePetPalApp(settings, link_factory=lambda _s, _p: link, port_lister=lambda: [], animations=False)

    async def go() -> None:
        try:
            async with app.run_test(size=SIZE) as pilot:
                try:
                    await _until(pilot, lambda: app.store.state == EngineState.LOADING, "LOADING", 60)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; the engine: {link.engine.snapshot().hold_reason!r}") from None
                app.redraw()
                banner = str(app.main.query_one("#banner").render())
                assert "LOADING" in banner and "READY" not in banner
                await pilot.press(*"wave hello", "enter")
                await _until(pilot, lambda: "queued" in app.store.hold_reason, "the queued start")
                assert app.main.query_one("#task-input").value == "wave hello"  # type: ignore[attr-defined]
                await body(pilot, app, link, gate)
        finally:
            gate.set()
            link.engine.close(timeout=10.0)

    asyncio.run(go())


def test_enter_while_loading_starts_once_the_policy_is_ready(sim_arm: Any, tmp_path: Path) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: InProcessEngine, gate: threading.Event) -> None:
        sim_arm.clear_trace()
        await pilot.pause(0.5)
        assert _goal_writes(sim_arm.trace()) == [], "the arm moved before the policy was ready"
        assert app.store.state == EngineState.LOADING
        gate.set()
        await _until(pilot, lambda: app.store.state == EngineState.RUNNING, "RUNNING once ready")
        assert app.store.task == "wave hello"
        await pilot.pause(0.5)
        assert _goal_writes(sim_arm.trace()), "the queued start never drove the arm"
        operator = [command_name(c) for c in link.sent if not isinstance(c, Heartbeat)]  # the event loop also beats (issue 17)
        assert operator == ["start"]  # one Enter, one start: the engine ran it

    _run(sim_arm, tmp_path, body)


@pytest.mark.parametrize("key", ["f12", "f6"])
def test_estop_or_stop_while_waiting_cancels_the_queued_start(sim_arm: Any, tmp_path: Path, key: str) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: InProcessEngine, gate: threading.Event) -> None:
        await pilot.press(key)
        want = EngineState.ESTOP if key == "f12" else EngineState.LOADING
        await _until(pilot, lambda: app.store.state == want and "queued" not in app.store.hold_reason, "cancelled")
        await pilot.pause(0.3)  # F6 holds: its own Goal_Position write follows the state change
        sim_arm.clear_trace()
        gate.set()
        await _until(pilot, lambda: link.engine.policy_ready, "the policy")
        await pilot.pause(1.0)
        assert app.store.state == (EngineState.ESTOP if key == "f12" else EngineState.READY)
        assert _goal_writes(sim_arm.trace()) == [], "a cancelled start moved the arm"

    _run(sim_arm, tmp_path, body)
