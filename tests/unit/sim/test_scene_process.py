"""The scene camera's renderer process: the same picture as rendering in the engine, off its GIL, and a
fallback to in-process rendering when the process is gone."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from lepetpal_tui.arm.camera import SceneCamera
from lepetpal_tui.sim.scene import SceneRenderer
from lepetpal_tui.sim.scene_process import SceneProcessError, SceneRendererProcess

W, H = 160, 120


@pytest.fixture
def renderer() -> Iterator[SceneRendererProcess]:
    r = SceneRendererProcess(W, H)
    yield r
    r.close()


def _poses(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-60.0, 60.0, 6) for _ in range(n)]


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # already reaped
        if waited == pid:
            return True
        time.sleep(0.02)
    return False


def test_the_process_draws_the_same_bytes_as_in_process(renderer: SceneRendererProcess) -> None:
    local = SceneRenderer(W, H)
    for q in _poses(8):
        np.testing.assert_array_equal(renderer.render(q), local.render(q))
    assert renderer.pid != os.getpid()


def test_a_still_arm_asks_the_process_nothing() -> None:
    pose = [np.zeros(6)]
    cam = SceneCamera("front", W, H, joints=lambda: pose[0])
    try:
        first = cam.latest_image()
        remote = cam._remote
        assert remote is not None and cam.renderer == "process"
        asked = remote._request
        pose[0] = np.full(6, 0.01)  # below the picture's resolution (0.05 degree)
        assert cam.latest_image() is first
        assert remote._request == asked
        pose[0] = np.full(6, 5.0)
        assert not np.array_equal(cam.latest_image(), first)
        assert remote._request == asked + 1
    finally:
        cam.close()


def test_a_killed_renderer_falls_back_to_the_same_picture_in_process() -> None:
    pose = [np.zeros(6)]
    cam = SceneCamera("front", W, H, joints=lambda: pose[0])
    try:
        cam.latest_image()
        remote = cam._remote
        assert remote is not None
        os.kill(remote.pid, signal.SIGKILL)
        assert _gone(remote.pid)
        local = SceneRenderer(W, H)
        for q in _poses(3):
            pose[0] = q
            np.testing.assert_array_equal(cam.latest_image(), local.render(q))
        assert cam.renderer == "in-process"
        assert "scene renderer" in cam.fallback_reason
    finally:
        cam.close()


def test_close_ends_the_process_and_removes_its_ring(renderer: SceneRendererProcess) -> None:
    renderer.render(np.zeros(6))
    ring = renderer._ring.name
    assert os.path.exists(f"/dev/shm/{ring}")
    renderer.close()
    assert _gone(renderer.pid)
    assert not os.path.exists(f"/dev/shm/{ring}")
    with pytest.raises(SceneProcessError):
        renderer.render(np.zeros(6))


def test_the_process_exits_when_its_owner_goes_away(renderer: SceneRendererProcess) -> None:
    renderer.render(np.zeros(6))
    renderer._sock.close()  # what the kernel does to the owner's end when the engine is SIGKILLed
    assert _gone(renderer.pid), "the renderer outlived its owner"
