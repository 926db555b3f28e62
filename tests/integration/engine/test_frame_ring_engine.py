"""Camera frames from the engine process to a reader through shared memory, on the simulated arm.

The engine's frame publisher writes the scene camera into the ring, but only while a reader asks (and at
the rate it asks); the name arrives with the telemetry; a reader (as the UI does) attaches and sees the
arm move while the policy runs, the plan ahead filled while running and empty while holding, and the
ring gone once the engine quit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepetpal_tui.engine.frame_publisher import STILL_SCENE_REFRESH_S
from lepetpal_tui.engine.launcher import EngineClient
from lepetpal_tui.frame_ring import PREVIEW, FrameRing
from lepetpal_tui.wire import EngineState, Start, TelemetryBatch

from .conftest import sim_settings  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow


def _until(client: EngineClient, pred: Any, timeout: float) -> TelemetryBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b in client.poll(0.05):
            if pred(b):
                return b
    raise AssertionError(f"no matching telemetry within {timeout} s")


def _reading(ring: FrameRing, seconds: float, hz: float) -> None:
    """Ask for frames at `hz` for `seconds`, renewing the demand as the camera pane does on each poll."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ring.want(PREVIEW, hz)
        time.sleep(0.1)


def test_scene_frames_reach_a_reader_and_follow_the_arm(sim_arm: Any, tmp_path: Path) -> None:
    settings = sim_settings(tmp_path, model={"mode": "scripted"})
    client = EngineClient.spawn(settings, sim_port=sim_arm.port)
    ring: FrameRing | None = None
    try:
        ready = _until(client, lambda b: b.frame_ring != "" and b.state == EngineState.READY, 60.0)
        assert ready.plan_ahead == ()  # holding: nothing planned
        assert [c.name for c in ready.cameras] == ["front"] and ready.cameras[0].kind == "synthetic"
        ring = FrameRing.attach(ready.frame_ring)
        assert ring.cameras == ("front",) and ring.shape("front") == (480, 640)
        time.sleep(1.0)
        assert ring.latest_seq("front") == 0, "frames drawn while no reader asked for them"
        _reading(ring, 0.5, 5.0)
        still = ring.latest("front")
        assert still is not None
        _reading(ring, 2.5, 5.0)
        # The arm holds: the same picture, written again only about once a second (not at the camera's
        # 5 Hz), so its age on screen stays the picture's true age.
        again = ring.latest("front")
        assert again is not None and np.array_equal(again.image, still.image)
        assert 1 <= again.seq - still.seq <= 2.5 / STILL_SCENE_REFRESH_S + 1
        assert time.monotonic() - again.t < STILL_SCENE_REFRESH_S + 0.5
        client.send(Start(task="wave"))
        running = _until(client, lambda b: b.state == EngineState.RUNNING and len(b.plan_ahead) > 0, 10.0)
        assert all(len(g) == 6 for g in running.plan_ahead)
        before = ring.latest_seq("front")
        _reading(ring, 2.0, 2.0)  # the arm moves: new pictures, but only as many as the reader asks for
        moving = ring.latest("front")
        assert moving is not None and moving.seq > still.seq
        assert 2 <= moving.seq - before <= 2.0 * 2.0 + 2
        assert np.any(moving.image != still.image), "the scene camera did not follow the arm"
        assert time.monotonic() - moving.t < 1.0  # a fresh frame, stamped on the shared monotonic clock
        name = ring.name
    finally:
        if ring is not None:
            ring.close()
        client.close()
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(name)  # the engine unlinked it when it quit
