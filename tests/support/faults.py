"""Faults the simulator cannot produce on its own, for engine tests on the simulated arm.

The simulated arm injects bus faults itself (silent servos, no health replies, ...). Two failures it
cannot make: a goal write that fails on the host side (a sync write has no reply, so only the port can
fail it) and a camera that stops. These stand in for exactly those and nothing more: everything else is
the real Arm adapter on the real LeRobot bus.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from lepetpal_tui.arm.adapter import Arm, ArmError
from lepetpal_tui.wire import CapturedFrame


class WriteFailingArm(Arm):
    """The real Arm, except that goal writes raise (before reaching the bus) while `fail_writes` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_writes = threading.Event()

    def write_goals(self, goals: npt.NDArray[np.float64]) -> None:
        if self.fail_writes.is_set():
            raise ArmError("Writing goals failed on the port: write timeout (injected)")
        super().write_goals(goals)


class StoppingCamera:
    """Fresh frames until `stop()`; then, like LeRobot's reader after the device stalls, the last frame
    with its old capture time (or, with `reason`, no frame and a failure like OpenCVFrameSource's)."""

    def __init__(self, width: int = 64, height: int = 48) -> None:
        self._image = np.full((height, width, 3), 100, dtype=np.uint8)
        self._stopped_at: float | None = None
        self._reason = ""
        self.reads = 0

    @property
    def failed_reason(self) -> str:
        return self._reason

    def stop(self, reason: str = "") -> None:
        self._stopped_at = time.monotonic()
        self._reason = reason

    def resume(self) -> None:
        self._stopped_at = None
        self._reason = ""

    def latest(self) -> CapturedFrame | None:
        self.reads += 1
        if self._reason:
            return None
        return CapturedFrame(self._image, self._stopped_at or time.monotonic())

    def close(self) -> None:
        pass
