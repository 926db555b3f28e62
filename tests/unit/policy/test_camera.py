"""Cameras: synthetic scene, LeRobot OpenCVCamera on a real video file, fallback on failure."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lepetpal_tui.config import CameraSettings
from lepetpal_tui.core.camera import SyntheticCamera, open_camera
from lepetpal_tui.core.types import EngineEvent


def test_synthetic_is_deterministic_and_moves() -> None:
    a, b = SyntheticCamera("front", 160, 120), SyntheticCamera("front", 160, 120)
    f0, f45 = a.frame_at(0), a.frame_at(45)
    assert f0.shape == (120, 160, 3) and f0.dtype == np.uint8
    np.testing.assert_array_equal(f0, b.frame_at(0))
    assert np.abs(f0.astype(int) - f45.astype(int)).sum() > 1000  # the ball moved
    assert a.latest().shape == (120, 160, 3)


def test_open_synthetic_never_fails() -> None:
    events: list[EngineEvent] = []
    cam = open_camera("front", CameraSettings(source="synthetic", width=64, height=48), events.append)
    assert cam.kind == "synthetic" and cam.failed_reason == "" and cam.latest().shape == (48, 64, 3)
    cam.close()
    assert events == []


def test_missing_device_falls_back_with_event() -> None:
    events: list[EngineEvent] = []
    cam = open_camera("wrist", CameraSettings(source=57, width=64, height=48), events.append)
    try:
        assert cam.kind == "synthetic"
        assert "wrist" in cam.failed_reason and "57" in cam.failed_reason
        assert len(events) == 1 and events[0].level == "warning" and "[cameras.wrist]" in events[0].fix
        assert cam.latest().shape == (48, 64, 3)
    finally:
        cam.close()


def test_missing_file_without_fallback_reports_error() -> None:
    events: list[EngineEvent] = []
    cam = open_camera("front", CameraSettings(source="/nonexistent/clip.mp4"), events.append,
                      fallback_synthetic=False)
    assert "does not exist" in cam.failed_reason and events[0].level == "error"
    assert cam.latest().shape == (480, 640, 3)  # still never blocks or raises


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
        frame = cam.latest()
        while frame.shape != (48, 64, 3) or frame.max() == 0:
            assert time.monotonic() < deadline, "no frame from the video file"
            time.sleep(0.05)
            frame = cam.latest()
        assert frame[20, 20, 0] > 150 and frame[20, 20, 2] < 60  # converted to RGB
        t0 = time.perf_counter()
        cam.latest()
        assert time.perf_counter() - t0 < 0.05  # never blocks
        time.sleep(0.6)  # 10 frames at 30 fps: it has looped at least once
        assert cam.failed_reason == "" and events == []
        assert cam.kind == "video"
    finally:
        cam.close()
