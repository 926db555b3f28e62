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


# ------------------------------------------------------------------------------------ camera and plan


def _camera_batches(ring_name: str, failed: str = "", plan: bool = True) -> list[Any]:
    """The running scenario with a frame ring, the camera's status and a plan ahead."""
    import dataclasses

    from lepetpal_tui.wire import CameraStatus

    from .conftest import GOAL, scenario  # type: ignore[import-not-found]

    kind = "opencv" if failed else "synthetic"
    cams = (CameraStatus("front", kind, failed, 640, 480),)
    # The next 1.5 s: the shoulder swings out, the gripper closes (after the safety filter's ramp).
    ahead = tuple(
        (GOAL[0] + 6.0 * k, GOAL[1] - 3.0 * k, GOAL[2], GOAL[3] + 2.0 * k, GOAL[4], max(0.0, GOAL[5] - 15.0 * k))
        for k in range(1, 7)
    ) if plan else ()
    out = scenario("running")
    return [dataclasses.replace(b, frame_ring=ring_name, cameras=cams, plan_ahead=ahead) for b in out]


def _ring(pattern: bool = False) -> Any:
    """A frame ring holding one deterministic frame: the scene at the test pose (or the fallback)."""
    import numpy as np

    from lepetpal_tui.arm.camera import SyntheticCamera
    from lepetpal_tui.frame_ring import FrameRing
    from lepetpal_tui.sim.scene import SceneRenderer

    from .conftest import MEASURED, T0  # type: ignore[import-not-found]

    ring = FrameRing.create({"front": (240, 320)})
    image = SyntheticCamera("front", 320, 240).frame_at(0) if pattern else SceneRenderer(320, 240).render(np.array(MEASURED))
    ring.write("front", image, t=T0 - 0.2)
    return ring


def _camera_settings() -> Settings:
    from lepetpal_tui.settings import UISettings

    return Settings(ui=UISettings(camera="halfblock"))


def _snap_camera(make_app: Any, settle: Any, snap_compare: Any, size: tuple[int, int], keys: tuple[str, ...] = (),
                 failed: str = "", plan: bool = True) -> bool:
    ring = _ring(pattern=bool(failed))
    try:
        app, _link = make_app(settings=_camera_settings(), batches=_camera_batches(ring.name, failed, plan))

        async def run_before(pilot: Any) -> None:
            await settle(pilot, app, 2)
            app.set_focus(None)
            for key in keys:
                await pilot.press(key)
            for _ in range(50):  # the pane reads the ring on its own timer
                await pilot.pause(0.02)
                if app.main.camera.frames_drawn:
                    break
            app.main.camera.poll()
            await pilot.pause()

        return bool(snap_compare(app, terminal_size=size, run_before=run_before))
    finally:
        ring.close()
        ring.unlink()


def test_camera_pane_halfblock(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """Wide terminal: the camera column shows the scene frame in half blocks, its name, size and age."""
    assert _snap_camera(make_app, settle, snap_compare, (160, 50))


def test_camera_policy_input(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """v: the policy's input, the frame padded black on the top into the checkpoint's 512x512."""
    assert _snap_camera(make_app, settle, snap_compare, (160, 50), keys=("v",))


def test_camera_failed(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """A camera that failed says why and that the synthetic fallback is what is shown."""
    why = "camera device 0 failed to open (ConnectionError: OpenCVCamera(0) read failed)"
    assert _snap_camera(make_app, settle, snap_compare, (160, 50), failed=why)


def test_plan_ahead_gauges(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """The plan ahead on each joint gauge (· up to ◇) and its end value, camera hidden at 120 columns."""
    assert _snap_camera(make_app, settle, snap_compare, SIZE)


def test_layout_80x24(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """80x24: every pane keeps its border; the camera is hidden until c."""
    assert _snap_camera(make_app, settle, snap_compare, (80, 24))


def test_layout_80x24_camera(make_app: Any, settle: Any, snap_compare: Any) -> None:
    """80x24 after c: the camera takes the Port/Model column."""
    assert _snap_camera(make_app, settle, snap_compare, (80, 24), keys=("c",))
