"""CameraGuard: fresh frames pass, old or missing ones are faults, a camera still starting is neither."""

from __future__ import annotations

import numpy as np

from lepetpal_tui.arm.camera import SyntheticCamera
from lepetpal_tui.engine.camera_guard import CameraGuard
from lepetpal_tui.settings import CameraSettings, Settings
from lepetpal_tui.wire import CapturedFrame


class Source:
    def __init__(self, frame: CapturedFrame | None, failed: str = "") -> None:
        self.frame, self.failed_reason = frame, failed

    def latest(self) -> CapturedFrame | None:
        return self.frame


def _frame(t: float) -> CapturedFrame:
    return CapturedFrame(np.zeros((4, 4, 3), np.uint8), t)


def test_sorts_fresh_stale_failed_and_starting() -> None:
    s = Settings()  # camera_timeout_s = 1.0
    now = 100.0
    guard = CameraGuard({"fresh": Source(_frame(now - 0.5)), "stale": Source(_frame(now - 1.5)),
                         "gone": Source(None, "device unplugged")}, s, opened_at=now - 10)
    r = guard.read(now)
    assert set(r.images) == {"fresh"} and not r.waiting
    assert "no new frame for 1.5 s" in r.faults["stale"] and r.faults["gone"] == "device unplugged"
    starting = CameraGuard({"cam": Source(None)}, s, opened_at=now - 0.2).read(now)
    assert starting.waiting and not starting.faults
    late = CameraGuard({"cam": Source(None)}, s, opened_at=now - 2.0).read(now)
    assert "no frame within 1 s" in late.faults["cam"]


def test_stand_in_has_the_configured_size_and_synthetic_cameras_are_skipped_for_faults() -> None:
    s = Settings(cameras={"wrist": CameraSettings(width=64, height=48)})
    guard = CameraGuard({"wrist": SyntheticCamera("wrist", 64, 48)}, s, opened_at=0.0, stand_in_factory=SyntheticCamera)
    assert guard.stand_in("wrist").shape == (48, 64, 3)
    assert CameraGuard({}, s, opened_at=0.0).stand_in("wrist").shape == (48, 64, 3)  # flat grey without a factory
    assert guard.read(1e9, faults_only=True).images == {}
