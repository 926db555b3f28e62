"""Snapshots of every state on a scripted engine with a fixed clock (update: pytest --snapshot-update)."""

from __future__ import annotations

from typing import Any

import pytest

SIZE = (120, 40)

# scenario, batches to wait for, autoconnect, ports
STATES: dict[str, tuple[str | None, int, bool, bool]] = {
    "no_arm": (None, 0, False, False),
    "ports_listed": (None, 0, False, True),
    "downloading": ("downloading", 1, True, True),
    "loading": ("loading", 1, True, True),
    "loading_queued": ("loading-queued", 1, True, True),
    "ready": ("ready", 1, True, True),
    "running": ("running", 2, True, True),
    "dry_run": ("dry-run", 2, True, True),
    "estop": ("estop", 3, True, True),
    "error": ("error", 1, True, True),
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
    app, _link = make_app(scenario, **kw)
    assert snap_compare(app, terminal_size=SIZE, run_before=_before(app, settle, batches))


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
