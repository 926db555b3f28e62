"""The Camera pane on the app: hidden panes read nothing, c shows it, v switches views, and the e-stop
keys still act while it is shown."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from lepetpal_tui.frame_ring import FrameRing
from lepetpal_tui.settings import Settings, UISettings
from lepetpal_tui.sim.scene import SceneRenderer
from lepetpal_tui.wire import EngineState

from .conftest import MEASURED, T0, scenario  # type: ignore[import-not-found]


def _batches(ring: FrameRing) -> list[Any]:
    import dataclasses

    return [dataclasses.replace(b, frame_ring=ring.name) for b in scenario("running")]


async def _pause_until(pilot: Any, cond: Any, tries: int = 100) -> bool:
    for _ in range(tries):
        await pilot.pause(0.02)
        if cond():
            return True
    return False


def test_camera_keys_and_estop(make_app: Any, settle: Any) -> None:
    asyncio.run(_camera_keys_and_estop(make_app, settle))


async def _camera_keys_and_estop(make_app: Any, settle: Any) -> None:
    ring = FrameRing.create({"front": (120, 160)})
    renderer = SceneRenderer(160, 120)
    ring.write("front", renderer.render(np.array(MEASURED)), t=T0 - 0.1)
    try:
        app, link = make_app(settings=Settings(ui=UISettings(camera="halfblock")), batches=_batches(ring))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app, 2)
            app.set_focus(None)
            cam = app.main.camera
            await pilot.pause(0.5)
            assert not cam.display and cam.frames_drawn == 0  # hidden at 120 columns: nothing is read
            await pilot.press("c")
            assert cam.display
            assert await _pause_until(pilot, lambda: cam.frames_drawn >= 1)
            drawn = cam.frames_drawn
            await pilot.pause(0.5)
            assert cam.frames_drawn == drawn  # no new frame in the ring: nothing redrawn
            ring.write("front", renderer.render(np.array(MEASURED) + 20.0), t=T0)
            assert await _pause_until(pilot, lambda: cam.frames_drawn > drawn)  # a new frame is picked up
            await pilot.press("v")
            assert cam.view == "policy" and "observation.images.front" in str(cam.border_title)
            await pilot.press("space")  # e-stop from the camera pane
            await pilot.pause(0.1)
            assert "estop" in link.kinds()
            assert app.store.state == EngineState.ESTOP
            await pilot.press("c")
            assert not cam.display
    finally:
        ring.close()
        ring.unlink()
