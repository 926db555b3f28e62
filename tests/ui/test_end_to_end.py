"""The real app, the real engine process, a tiny SmolVLA and the simulated arm: type a task, run, press
F12, and check on the simulator's packet trace that no Goal_Position write follows the next tick."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.settings import Settings
from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.ui.link import EngineLink, spawn_engine
from lepetpal_tui.wire import Command, EngineState, EStop, TelemetryBatch

pytestmark = pytest.mark.slow

TICK_WORK_MARGIN_S = 0.010  # the write of the tick that was already due may take a few ms on the bus


class RecordingLink:
    """The real engine client, recording what the UI sends (to know when the e-stop left the UI)."""

    def __init__(self, inner: EngineLink) -> None:
        self.inner = inner
        self.sent: list[Command] = []

    @property
    def alive(self) -> bool:
        return self.inner.alive

    def send(self, command: Command) -> None:
        self.sent.append(command)
        self.inner.send(command)

    def poll(self, timeout: float) -> list[TelemetryBatch]:
        return self.inner.poll(timeout)

    def close(self, go_home: bool = False, timeout: float = 5.0) -> list[TelemetryBatch] | None:
        return self.inner.close(go_home, timeout)


def goal_write_times(trace: list[Any]) -> list[float]:
    return [
        r.t for r in trace
        if r.direction == "rx" and r.register == "Goal_Position" and r.instruction in ("SYNC_WRITE", "WRITE")
    ]


async def wait_until(pilot: Any, pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_type_run_f12_stops_goal_writes(sim_arm: Any, borrowed_sim: Any, tiny_policy_dir: Path, tmp_path: Path) -> None:
    base = Settings()
    settings = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, path=str(tiny_policy_dir), fallback_to_scripted=False),
        logging=dataclasses.replace(base.logging, dir=str(tmp_path / "logs")),
        # The default 1 s UI heartbeat bound held the arm in a full run on 2 shared cores (the Pilot-driven
        # loop went 1 s without one while the tiny SmolVLA ran): this test is about F12, not the heartbeat.
        safety=dataclasses.replace(base.safety, ui_heartbeat_s=3.0),
    )
    links: list[RecordingLink] = []

    def factory(s: Settings, sim_port: str | None) -> EngineLink:
        link = RecordingLink(spawn_engine(s, sim_port))
        links.append(link)
        return link

    app = LePetPalApp(settings, link_factory=factory, sim_factory=borrowed_sim, animations=False)
    period = 1.0 / settings.control.rate_hz

    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(
                pilot,
                lambda: app.store.model is not None and app.store.model.phase == "ready"
                and app.store.state == EngineState.READY,
                240, "the tiny policy to load",
            )
            assert app.store.model is not None and app.store.model.source.endswith("policy")
            await pilot.press(*"pick up the cube", "enter")
            await wait_until(pilot, lambda: app.store.state == EngineState.RUNNING, 20, "RUNNING")
            assert app.store.task == "pick up the cube"
            await pilot.pause(1.0)
            sim_arm.clear_trace()
            await pilot.pause(0.3)

            await pilot.press("f12")
            estops = [c for c in links[0].sent if isinstance(c, EStop) and not c.torque_off]
            assert len(estops) == 1, links[0].sent
            t_cmd = estops[0].sent_at
            # The UI shows E-STOP at once ("e-stop sent"); wait for the engine's own batch to confirm it.
            await wait_until(
                pilot,
                lambda: app.store.state == EngineState.ESTOP and app.store.hold_reason != "e-stop sent",
                5, "the engine to confirm the e-stop",
            )
            await pilot.pause(0.6)  # many ticks: none may write a goal
            assert app.store.state == EngineState.ESTOP
            writes = goal_write_times(sim_arm.trace())
            assert any(t < t_cmd for t in writes), "the arm was not being driven before the e-stop"
            late = max(writes) - t_cmd
            assert late <= period + TICK_WORK_MARGIN_S, f"goal written {1000 * late:.1f} ms after F12"
            print(f"F12 -> last Goal_Position write: {1000 * late:.1f} ms (tick {1000 * period:.1f} ms)")
            app.redraw()
            assert "E-STOP" in str(app.query_one("#banner").render())

            await pilot.press("q")  # not moving any more: quits without asking, closes the engine
            await wait_until(pilot, lambda: not app.is_running, 30, "the app to exit")

    asyncio.run(go())
    assert not links[0].alive, "the engine process outlived the app"
