"""Frames for the policy, and what a camera fault does to the arm.

A camera that stops, or gives frames older than `safety.camera_timeout_s`, holds the arm within about that
bound plus this watch's period (between inferences too: a chunk lasts over a second). A synthetic scene
may stand in for a lost camera only where a blind policy cannot hurt anyone (dry-run, the simulated arm)
or where the operator confirmed it for this start with the fallback on screen.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import numpy as np
import numpy.typing as npt

from lepetpal_tui.engine.camera_guard import CameraGuard, CameraReading, StandInFactory
from lepetpal_tui.engine.control import ACTIVE, MOVING, Control
from lepetpal_tui.wire import CapturedFrame, EngineState, EventKind, HoldCause

CONFIRM_WINDOW_S = 10.0  # a second start within this long confirms running on a synthetic fallback
WATCH_PERIOD_S = 0.1

Frames = dict[str, npt.NDArray[np.uint8]]


class FrameSourceLike(Protocol):
    """What the engine needs from a camera (`arm.camera.FrameSource`)."""

    @property
    def failed_reason(self) -> str: ...
    def latest(self) -> CapturedFrame | None: ...
    def close(self) -> None: ...


class CameraWatch:
    def __init__(self, control: Control, stand_in_factory: StandInFactory | None = None) -> None:
        self._c = control
        self._settings = control.settings
        self._stand_in_factory = stand_in_factory
        self.cameras: dict[str, FrameSourceLike] = {}
        self.guard = CameraGuard({}, self._settings, time.monotonic())
        self._stand_in_announced: set[str] = set()
        self._confirm_until = 0.0

    def open(self, cameras: dict[str, FrameSourceLike]) -> None:
        self.cameras = cameras
        self.guard = CameraGuard(cameras, self._settings, time.monotonic(), self._stand_in_factory)

    def close(self) -> None:
        for cam in self.cameras.values():
            try:
                cam.close()
            except Exception:  # a camera that fails to close must not keep the others open
                continue

    def start_refusal(self, confirmed_by_operator: bool) -> tuple[str, set[str]]:
        """("why start is refused" or "", the cameras the operator confirmed running without)."""
        faults = self.guard.read(time.monotonic(), faults_only=True).faults
        if not faults or self._c.dry_run or self._settings.is_sim:
            return "", set()  # a fault later is handled by the watch (stand-in or hold)
        what = "; ".join(f"{name}: {why}" for name, why in faults.items())
        if not self._settings.safety.camera_fallback_synthetic:
            return f"camera fault ({what}). Reconnect the camera, or use dry-run.", set()
        now = time.monotonic()
        if confirmed_by_operator or now < self._confirm_until:
            self._confirm_until = 0.0
            self._c.event("warning", f"Running on the synthetic scene for camera {', '.join(faults)} (confirmed): "
                          "the policy does not see the room.", "Stop (F6) or e-stop (F12) if the arm misbehaves.",
                          EventKind.CAMERA)
            return "", set(faults)
        self._confirm_until = now + CONFIRM_WINDOW_S
        return (f"camera fault ({what}). The policy would see only a synthetic scene and act blind. "
                f"Press start again within {CONFIRM_WINDOW_S:g} s to run on it anyway, or use dry-run."), set()

    def live_refusal(self) -> str:
        """Why dry-run may not go live now ("" when it may): a real arm's camera gives no frames and the
        operator has not confirmed running without it, so the plan queued from the stand-in scene must not
        reach the arm."""
        faults = self.guard.read(time.monotonic(), faults_only=True).faults
        blocked = {n: why for n, why in faults.items() if n not in self._c.confirmed_stand_ins}
        if not blocked or self._settings.is_sim:
            return ""
        what = "; ".join(f"{name}: {why}" for name, why in blocked.items())
        return (f"camera fault ({what}): the plan comes from a synthetic scene. Reconnect the camera, or stop "
                "and start again live (it asks to confirm running on the synthetic scene).")

    def _may_stand_in(self, camera: str, state: EngineState) -> bool:
        if not self._settings.safety.camera_fallback_synthetic:
            return False
        return state == EngineState.DRY_RUN or self._settings.is_sim or camera in self._c.confirmed_stand_ins

    def frames(self, state: EngineState, epoch: int) -> Frames | None:
        """Fresh frames for the policy (stand-ins where allowed); None while a camera starts, or after
        holding the arm for a camera fault."""
        reading: CameraReading = self.guard.read(time.monotonic())
        if reading.faults:
            blocked = {n: why for n, why in reading.faults.items() if not self._may_stand_in(n, state)}
            if blocked:
                self._fault(blocked, epoch)
                return None
            for name, why in reading.faults.items():
                reading.images[name] = self.guard.stand_in(name)
                if name not in self._stand_in_announced:
                    self._stand_in_announced.add(name)
                    self._c.event("warning", f"Camera {name} gives no frames ({why}): the policy sees a synthetic "
                                  "scene (dry-run, simulated arm or confirmed start).",
                                  "Reconnect the camera; a live start on a real arm holds until it is back.",
                                  EventKind.CAMERA)
        if reading.waiting:
            return None
        return reading.images

    def _fault(self, faults: dict[str, str], epoch: int) -> None:
        what = "; ".join(f"{name}: {why}" for name, why in faults.items())
        with self._c.lock:
            if self._c.epoch != epoch or self._c.state not in MOVING:
                return  # already held (or restarted) since this reading was planned
        self._c.halt(EngineState.ERROR, f"camera fault: {what}", HoldCause.FAULT)
        fix = "Reconnect the camera (or fix [cameras] in lepetpal.toml), then re-arm and start."
        if self._settings.safety.camera_fallback_synthetic:
            fix += " Dry-run can go on with the synthetic scene, or start twice to confirm running on it."
        self._c.event("error", f"Camera fault ({what}). Holding: the policy must not act on missing or old frames.",
                      fix, EventKind.CAMERA_FAULT)

    def run(self, stopping: threading.Event) -> None:
        """The watch thread: between inferences, a camera that stops holds a running arm."""
        while not stopping.wait(WATCH_PERIOD_S):
            with self._c.lock:
                state, epoch = self._c.state, self._c.epoch
            if state in ACTIVE:
                reading = self.guard.read(time.monotonic(), faults_only=True)
                blocked = {n: why for n, why in reading.faults.items() if not self._may_stand_in(n, state)}
                if blocked:
                    self._fault(blocked, epoch)
