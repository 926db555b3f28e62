"""Cameras: synthetic scene, LeRobot OpenCVCamera on a real video file; a failed camera gives no frames."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lepetpal_tui.arm.camera import SyntheticCamera, open_camera
from lepetpal_tui.settings import CameraSettings
from lepetpal_tui.wire import EngineEvent


def test_synthetic_is_deterministic_and_moves() -> None:
    a, b = SyntheticCamera("front", 160, 120), SyntheticCamera("front", 160, 120)
    f0, f45 = a.frame_at(0), a.frame_at(45)
    assert f0.shape == (120, 160, 3) and f0.dtype == np.uint8
    np.testing.assert_array_equal(f0, b.frame_at(0))
    assert np.abs(f0.astype(int) - f45.astype(int)).sum() > 1000  # the ball moved
    assert a.latest().image.shape == (120, 160, 3)


def test_open_synthetic_never_fails() -> None:
    events: list[EngineEvent] = []
    cam = open_camera("front", CameraSettings(source="synthetic", width=64, height=48), events.append)
    frame = cam.latest()
    assert cam.kind == "synthetic" and cam.failed_reason == ""
    assert frame is not None and frame.image.shape == (48, 64, 3)
    assert abs(frame.t - time.monotonic()) < 0.5
    cam.close()
    assert events == []


def test_missing_device_reports_and_gives_no_frame() -> None:
    """The source never substitutes a frame: the engine decides whether a synthetic scene may stand in."""
    events: list[EngineEvent] = []
    cam = open_camera("wrist", CameraSettings(source=57, width=64, height=48), events.append)
    try:
        assert "wrist" in cam.failed_reason and "57" in cam.failed_reason
        assert len(events) == 1 and events[0].level == "error" and "[cameras.wrist]" in events[0].fix
        assert "a live arm holds" in events[0].message
        assert cam.latest() is None
    finally:
        cam.close()


def test_missing_file_without_fallback_reports_error() -> None:
    events: list[EngineEvent] = []
    cam = open_camera("front", CameraSettings(source="/nonexistent/clip.mp4"), events.append,
                      fallback_synthetic=False)
    assert "does not exist" in cam.failed_reason and events[0].level == "error"
    assert cam.latest() is None  # never blocks or raises, and never hands out a made-up frame


class _StallingLeRobotCamera:
    """Stands in for LeRobot's OpenCVCamera: frames until `stall`, then read_latest raises as LeRobot does
    when the newest frame is older than max_age_ms (the device stopped or was unplugged)."""

    def __init__(self) -> None:
        self.frame = np.full((48, 64, 3), 9, np.uint8)
        self.latest_timestamp: float | None = time.perf_counter()
        self.stalled = False
        self.is_connected = True
        self.thread = None

    def read_latest(self, max_age_ms: int) -> np.ndarray:
        if self.stalled:
            raise TimeoutError(f"frame is older than {max_age_ms} ms")
        return self.frame

    def disconnect(self) -> None:
        self.is_connected = False


def test_stalled_opencv_camera_fails_and_stops_giving_frames() -> None:
    from lepetpal_tui.arm.camera import OpenCVFrameSource

    events: list[EngineEvent] = []
    src = OpenCVFrameSource("front", CameraSettings(source=0, width=64, height=48), events.append)
    fake = _StallingLeRobotCamera()
    src._cam = fake  # as if connect() had opened it
    first = src.latest()
    assert first is not None and first.image.shape == (48, 64, 3)
    assert abs(first.t - time.monotonic()) < 0.5  # LeRobot's perf_counter stamp on the monotonic clock
    time.sleep(0.05)
    again = src.latest()
    assert again is not None and again.t == first.t  # the same picture keeps its capture time: it ages
    fake.stalled = True
    assert src.latest() is None
    assert "stopped delivering" in src.failed_reason and events and events[-1].level == "error"
    fake.stalled = False
    assert src.latest() is None  # a failed source stays failed (its frames can no longer be trusted)


def test_video_file_through_opencv_loops(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert writer.isOpened()
    for i in range(10):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 200  # BGR red
        frame[0:8, i * 6 : i * 6 + 6] = 255
        writer.write(frame)
    writer.release()
    events: list[EngineEvent] = []
    cam = open_camera("front", CameraSettings(source=str(path), fps=30), events.append)
    try:
        assert cam.failed_reason == "", cam.failed_reason
        deadline = time.monotonic() + 5
        got = cam.latest()
        while got is None or got.image.shape != (48, 64, 3) or got.image.max() == 0:
            assert time.monotonic() < deadline, "no frame from the video file"
            time.sleep(0.05)
            got = cam.latest()
        frame = got.image
        assert time.monotonic() - got.t < 0.5
        assert frame[20, 20, 0] > 150 and frame[20, 20, 2] < 60  # converted to RGB
        t0 = time.perf_counter()
        cam.latest()
        assert time.perf_counter() - t0 < 0.05  # never blocks
        time.sleep(0.6)  # 10 frames at 30 fps: it has looped at least once
        looped = cam.latest()  # a video that stopped at its end would show here as stale (or a failure)
        assert looped is not None and time.monotonic() - looped.t < 0.5, "the video did not loop"
        assert looped.t > got.t
        assert cam.failed_reason == "" and events == []
        assert cam.kind == "video"
    finally:
        cam.close()
