"""Which camera frames the policy may see: fresh ones only, and a synthetic stand-in only when allowed.

A camera that stops (no new frame within `safety.camera_timeout_s`, read errors, the device gone) is a
fault. The guard only finds faults and renders stand-ins; the engine decides whether a stand-in may feed
the policy (dry-run, the simulated arm, or a start the operator confirmed) or the arm holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from lepetpal_tui.config import Settings
from lepetpal_tui.core.camera import SyntheticCamera
from lepetpal_tui.core.types import CapturedFrame

Frame = npt.NDArray[np.uint8]


class CameraSource(Protocol):
    @property
    def failed_reason(self) -> str: ...
    def latest(self) -> CapturedFrame | None: ...


@dataclass
class CameraReading:
    images: dict[str, Frame] = field(default_factory=dict)  # fresh frames by camera name
    faults: dict[str, str] = field(default_factory=dict)  # camera name -> why it gives no fresh frame
    waiting: bool = False  # a camera is still starting (no frame yet, within the timeout): not a fault


class CameraGuard:
    """Reads every camera and sorts them into fresh frames and faults. Thread-safe enough: sources are."""

    def __init__(self, cameras: Mapping[str, CameraSource], settings: Settings, opened_at: float) -> None:
        self._cameras = dict(cameras)
        self._settings = settings
        self._opened_at = opened_at
        self._stand_ins: dict[str, SyntheticCamera] = {}

    @property
    def timeout_s(self) -> float:
        return self._settings.safety.camera_timeout_s

    def read(self, now: float, faults_only: bool = False) -> CameraReading:
        """`faults_only`: skip configured synthetic cameras (they cannot fail; rendering one costs ms)."""
        out = CameraReading()
        bound = self.timeout_s
        for name, src in self._cameras.items():
            if faults_only and getattr(src, "kind", "") == "synthetic":  # pattern or scene camera
                continue
            cap = src.latest()
            if cap is not None and now - cap.t <= bound:
                out.images[name] = cap.image
                continue
            reason = src.failed_reason.removeprefix(f'camera "{name}": ')  # the engine names the camera itself
            if not reason:
                if cap is None:
                    if now - self._opened_at < bound:
                        out.waiting = True  # warming up: no frame yet
                        continue
                    reason = f"no frame within {bound:g} s"
                else:
                    reason = f"no new frame for {now - cap.t:.1f} s (the bound is {bound:g} s)"
            out.faults[name] = reason
        return out

    def stand_in(self, name: str) -> Frame:
        """The synthetic scene for camera `name`, at its configured size."""
        cam = self._stand_ins.get(name)
        if cam is None:
            cs = self._settings.cameras.get(name)
            w, h, fps = (cs.width, cs.height, cs.fps) if cs is not None else (640, 480, 30)
            cam = self._stand_ins[name] = SyntheticCamera(name, w, h, fps)
        return cam.latest_image()
