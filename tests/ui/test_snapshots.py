"""Snapshots of every state on a scripted engine with a fixed clock (update: pytest --snapshot-update)."""

from __future__ import annotations

from typing import Any

import pytest

from lepetpal_tui.settings import ArmSettings, Settings
from lepetpal_tui.wire import EngineState

SIZE = (120, 40)

# scenario, batches to wait for, autoconnect, ports. Engine states and event texts are recorded from the
# real engine (conftest.scenario); only ticks, chunks and health are fixed figures.
STATES: dict[str, tuple[str | None, int, bool, bool]] = {
    "no_arm": (None, 0, False, False),
    "ports_listed": (None, 0, False, True),
    "connecting": ("connecting", 1, True, True),
    "downloading": ("downloading", 1, True, True),
    "loading": ("loading", 1, True, True),
    "loading_queued": ("loading-queued", 1, True, True),
    "ready": ("ready", 1, True, True),
    "policy_failed": ("policy_failed", 1, True, True),
    "scripted_fallback": ("scripted_fallback", 1, True, True),
    "running": ("running", 2, True, True),
    "dry_run": ("dry-run", 2, True, True),
    "macro": ("macro", 2, True, True),
    "estop": ("estop", 3, True, True),
    "estop_torque_off": ("estop_torque_off", 3, True, True),
    "fault_running": ("fault_running", 3, True, True),
}


def _before(app: Any, settle: Any, batches: int, blur: bool = True) -> Any:
    async def run_before(pilot: Any) -> None:
        await settle(pilot, app, batches)
        if blur:
            app.set_focus(None)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("state", list(STATES))
def test_state(state: str, make_app: Any, settle: Any, snap_compare: Any) -> None:
    scenario, batches, autoconnect, with_ports = STATES[state]
    kw: dict[str, Any] = {"autoconnect": autoconnect}
    if not with_ports:
        kw["ports"] = []
    if state == "ports_listed":
        # arm.port = "auto" (not the sim): the pane picks the SO-101 it found and shows its row.
        kw["settings"] = Settings(arm=ArmSettings(port="auto"))
    app, _link = make_app(scenario, **kw)
    assert snap_compare(app, terminal_size=SIZE, run_before=_before(app, settle, batches))


def test_engine_died(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """The engine process vanished while running: the UI says so (its own text) and shows ERROR."""
    app, link = make_app("running")

    async def run_before(pilot: Any) -> None:
        await settle(pilot, app, 2)
        link.die()
        for _ in range(200):
            await pilot.pause(0.01)
            if app.store.state == EngineState.ERROR:
                break
        app.set_focus(None)
        app.redraw()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("size", [(100, 30), (160, 50)])
def test_running_at_other_sizes(size: tuple[int, int], make_app: Any, settle: Any, snap_compare: Any) -> None:
    app, _link = make_app("running")
    assert snap_compare(app, terminal_size=size, run_before=_before(app, settle, 2))


def test_rearm_dialog(make_app: Any, settle: Any, snap_compare: Any) -> None:
    app, _link = make_app("estop")

    async def run_before(pilot: Any) -> None:
        await settle(pilot, app, 3)
        app.set_focus(None)
        await pilot.press("r")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
