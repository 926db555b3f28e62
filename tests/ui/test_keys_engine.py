"""The operator's keys against the real engine process on the simulated arm: the states asserted here are
the engine's own (the scripted link in test_keys.py only drives layout and checks which command a key
sends)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.engine.session_log import read_log
from lepetpal_tui.settings import Settings
from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.ui.link import spawn_engine
from lepetpal_tui.ui.widgets.confirm import ConfirmScreen
from lepetpal_tui.wire import EngineState

pytestmark = pytest.mark.slow


async def wait_until(pilot: Any, pred: Callable[[], bool], timeout: float, what: str) -> None:
    def app_state() -> str:
        store = pilot.app.store
        return f"{store.state.value} ({store.hold_reason or 'no reason'}), dry_run={store.dry_run}"

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the UI shows {app_state()}")


def test_keys_drive_the_real_engine(sim_arm: Any, borrowed_sim: Any, tmp_path: Path) -> None:
    base = Settings()
    settings = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, mode="scripted"),
        logging=dataclasses.replace(base.logging, dir=str(tmp_path / "logs")),
        # 1 s is the default; under a full test run on 2 shared cores a Pilot-driven loop once went 1.2 s
        # between heartbeats. This test is about the keys, and still fails if no heartbeat arrives at all.
        safety=dataclasses.replace(base.safety, ui_heartbeat_s=3.0),
    )
    links: list[Any] = []

    def factory(s: Settings, sim_port: str | None) -> Any:
        links.append(spawn_engine(s, sim_port))
        return links[-1]

    app = LePetPalApp(settings, link_factory=factory, sim_factory=borrowed_sim, animations=False)

    def engine_says(state: EngineState, reason: str = "") -> Callable[[], bool]:
        # The UI sets ESTOP itself the moment F12 leaves ("e-stop sent"): wait for the engine's reason.
        return lambda: app.store.state == state and reason in app.store.hold_reason

    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.store.model is not None and app.store.model.phase == "ready"
                             and app.store.state == EngineState.READY, 120, "the engine to be ready")
            await pilot.press(*"wave", "enter")
            await wait_until(pilot, engine_says(EngineState.RUNNING), 10, "RUNNING")
            assert app.store.task == "wave"

            assert app.focused is None  # Enter left the field: letters are keys again
            await pilot.press("d")
            await wait_until(pilot, engine_says(EngineState.DRY_RUN), 5, "DRY-RUN")
            await pilot.press("d")
            await wait_until(pilot, engine_says(EngineState.RUNNING), 5, "RUNNING again")

            await pilot.press("f12")
            await wait_until(pilot, engine_says(EngineState.ESTOP, "e-stop (latched)"), 5, "the engine's e-stop")
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the re-arm question")
            await pilot.press("y")
            await wait_until(pilot, engine_says(EngineState.READY), 5, "READY after re-arm")

            await pilot.press("h")
            await wait_until(pilot, engine_says(EngineState.MACRO, "macro home"), 5, "the home macro")
            await wait_until(pilot, engine_says(EngineState.READY), 15, "the macro to finish")

            await pilot.press("f11")
            await wait_until(pilot, engine_says(EngineState.ESTOP, "torque OFF"), 5, "the torque-off e-stop")
            await pilot.pause(0.3)
            assert not any(s["torque"] for s in sim_arm.state().values()), "torque still on after F11"
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the re-arm question")
            await pilot.press("y")
            await wait_until(pilot, engine_says(EngineState.READY), 5, "READY after the torque-off re-arm")
            assert all(s["torque"] for s in sim_arm.state().values()), "re-arm did not bring torque back"

            await pilot.press("q")
            await wait_until(pilot, lambda: not app.is_running, 30, "the app to exit")

    asyncio.run(go())
    # Heartbeats went out from the event loop the whole time: the engine never held for want of them.
    recs = list(read_log(links[0].log_path))
    assert any(r["type"] == "event" for r in recs)
    assert not any("UI not responding" in r.get("message", "") for r in recs)
