"""The Camera pane on the app: hidden panes read nothing, c shows it, v switches views, and the e-stop
keys still act while it is shown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from lepetpal_tui.frame_ring import DEMAND_HOLD_S, FrameRing
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
            assert ring.wanted_hz() == 0.0  # nor asked for: the engine draws no frames for it
            await pilot.press("c")
            assert cam.display
            assert await _pause_until(pilot, lambda: cam.frames_drawn >= 1)
            assert ring.wanted_hz() == cam.fps == UISettings().camera_fps  # shown: frames at the pane's rate
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
            await pilot.pause(0.3)
            # Hidden again: its polls stop renewing the demand, which lapses (DEMAND_HOLD_S after the last).
            assert ring.wanted_hz(now=time.monotonic() + DEMAND_HOLD_S - 0.25) == 0.0
    finally:
        ring.close()
        ring.unlink()


def test_kitty_and_sixel_panes_send_their_protocol(monkeypatch: Any, capfd: Any) -> None:
    """[ui] camera = "kitty" / "sixel": the pane draws through textual-image, and what reaches the
    terminal is that protocol's escape sequence (Kitty: APC `ESC _ G`, which textual-image writes to the
    terminal itself, then placeholder cells in the screen update; Sixel: DCS `ESC P ... q`), not half
    blocks. No such terminal is available here, so the bytes are checked, not a picture."""
    from textual._compositor import CompositorUpdate
    from textual.app import App

    from lepetpal_tui.ui.widgets.camera import CameraPane

    written: list[str] = []

    def display(self: App[Any], screen: Any, update: Any) -> None:
        if isinstance(update, CompositorUpdate):
            written.append(update.render_segments(self.console))

    monkeypatch.setattr(App, "_display", display)
    ring = FrameRing.create({"front": (120, 160)})
    ring.write("front", SceneRenderer(160, 120).render(np.array(MEASURED)), t=T0)

    class One(App[None]):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode = mode

        def compose(self) -> Any:
            yield CameraPane(("front",), {}, mode=self.mode, fps=5.0, id="camera")

    async def run(mode: str) -> tuple[int, str]:
        written.clear()
        capfd.readouterr()
        app = One(mode)
        async with app.run_test(size=(60, 24)) as pilot:
            pane = app.query_one(CameraPane)
            pane.ring_name = ring.name
            assert await _pause_until(pilot, lambda: pane.frames_drawn >= 1)
            await pilot.pause(0.3)
            return pane.frames_drawn, "".join(written) + capfd.readouterr().out

    try:
        drawn, kitty = asyncio.run(run("kitty"))
        assert drawn >= 1 and "\x1b_G" in kitty and "▀" not in kitty
        drawn, sixel = asyncio.run(run("sixel"))
        assert drawn >= 1 and "\x1bP" in sixel and "▀" not in sixel
    finally:
        ring.close()
        ring.unlink()


def test_a_slow_pane_keeps_asking_between_its_polls() -> None:
    """[ui] camera_fps below 1: the pane polls every 2-5 s, so its ask for frames must last until the next
    poll, or the engine stops making frames in between and the pane freezes."""
    from textual.app import App

    from lepetpal_tui.ui.widgets.camera import CameraPane

    ring = FrameRing.create({"front": (120, 160)})

    class One(App[None]):
        def compose(self) -> Any:
            yield CameraPane(("front",), {}, mode="halfblock", fps=0.5, id="camera")

    async def run() -> None:
        async with One().run_test(size=(60, 24)) as pilot:
            pane = pilot.app.query_one(CameraPane)
            pane.ring_name = ring.name  # attaches and polls once
            await pilot.pause(0.1)
            now = time.monotonic()
            assert ring.wanted_hz(now) == 0.5
            assert ring.wanted_hz(now + 1.0 / 0.5 - 0.1) == 0.5  # still asked just before the next poll

    try:
        asyncio.run(run())
    finally:
        ring.close()
        ring.unlink()
