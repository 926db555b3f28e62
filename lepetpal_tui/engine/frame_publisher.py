"""Copies each camera's newest frame into the shared-memory frame ring, beside the engine, never in it.

Why a thread of its own: the actuator tick must never wait for a camera, a memcpy or a reader. This
thread runs at a raised nice value (below the tick and inference), polls the engine's cameras at their
configured rate, and writes only frames it has not written before (a real camera's capture time moved,
or the scene camera's pose changed), and only as many as its readers want (`FrameRing.wanted_hz`: the
camera pane's 5 Hz while it is shown, the recorder's camera rate while recording, none in a headless
run). Drawing the scene camera for nobody cost the policy up to 13 % of its speed (frame_ring.py). The
ring's name goes to the UI with the telemetry (`TelemetryBatch.frame_ring`); the UI attaches and reads
at its own pace. A camera that failed gets its
synthetic stand-in written instead, so the pane can show what the fallback looks like beside the reason.

Frames of another size than [cameras.<name>] width x height (a video file, a camera that ignored the
requested mode) are resized with nearest-neighbour sampling before writing: the ring's layout is fixed
when it is created.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lepetpal_tui.frame_ring import FrameRing
from lepetpal_tui.settings import Settings

if TYPE_CHECKING:
    from lepetpal_tui.engine.facade import Engine

Frame = npt.NDArray[np.uint8]

_NICE = 10  # lower priority than the tick (which asks for -5) and than inference (default 0)
_MAX_HZ = 30.0
STILL_SCENE_REFRESH_S = 1.0  # the scene camera's unchanged picture, stamped again this often


def resize_nearest(image: Frame, height: int, width: int) -> Frame:
    """Nearest-neighbour resize (cheap, no OpenCV): enough for a preview and a fixed ring layout."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    return np.ascontiguousarray(image[rows][:, cols, :3])


class FramePublisher:
    """Owns the frame ring of one engine: creates it when the engine's cameras are open, unlinks it at stop."""

    def __init__(self, engine: Engine, settings: Settings, rate_hz: float | None = None) -> None:
        self._engine = engine
        self._settings = settings
        fps = max((cs.fps for cs in settings.cameras.values()), default=5)
        self._period = 1.0 / min(_MAX_HZ, float(rate_hz or fps))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ring: FrameRing | None = None
        self.written = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-frame-ring", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        ring, self.ring = self.ring, None
        if ring is not None:
            self._engine.frame_ring = ""
            with contextlib.suppress(Exception):
                ring.close()
            with contextlib.suppress(Exception):
                ring.unlink()

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        while not self._stop.is_set() and not self._engine.cameras.cameras:
            if self._engine.finished:
                return
            self._stop.wait(0.1)
        cameras = dict(self._engine.cameras.cameras)
        sizes = {}
        for name in cameras:
            cs = self._settings.cameras.get(name)
            sizes[name] = (cs.height, cs.width) if cs is not None else (480, 640)
        try:
            ring = self.ring = FrameRing.create(sizes)
        except Exception:
            return  # no shared memory (a tiny /dev/shm): the engine runs on, the pane says no frames
        self._engine.frame_ring = ring.name
        last_t: dict[str, float] = {}
        last_img: dict[str, Frame] = {}  # held, not id()s: a freed array's id can come back
        last_round = -float("inf")
        while not self._stop.wait(self._period):
            now = time.monotonic()
            if not self._due(ring.wanted_hz(now), now - last_round):
                continue
            last_round = now
            for name, src in cameras.items():
                with contextlib.suppress(Exception):  # a camera's trouble is the camera guard's to report
                    self._publish(ring, name, src, sizes[name], last_t, last_img)

    def _due(self, wanted_hz: float, since_last_s: float) -> bool:
        """Whether this poll makes frames: a reader wants them, and at least as long has passed since the
        last round as its rate asks (half a poll of slack, so 5 Hz polled at 30 Hz gives 5, not 4.3)."""
        if wanted_hz <= 0:
            return False
        return since_last_s >= 1.0 / wanted_hz - self._period / 2

    def _publish(self, ring: FrameRing, name: str, src: Any, size: tuple[int, int], last_t: dict[str, float],
                 last_img: dict[str, Frame]) -> None:
        cap = src.latest()
        if cap is not None:
            image, t = cap.image, cap.t
            # A new picture: a later capture time (real cameras: a frozen one keeps its old stamp, and
            # its age grows on screen), or another array (the scene camera returns the same cached array
            # while the arm stands still, stamped "now"). That still picture is current, so it is
            # written again once a second: the pane shows its true age, not the time the arm stopped.
            if t == last_t.get(name):
                return
            if (getattr(src, "kind", "") == "synthetic" and image is last_img.get(name)
                    and t - last_t.get(name, t) < STILL_SCENE_REFRESH_S):
                return
        elif src.failed_reason and self._settings.safety.camera_fallback_synthetic:
            # The engine's own stand-in (injected at the process edge), so the pane shows what the policy
            # would see in its place.
            image, t = self._engine.cameras.guard.stand_in(name), time.monotonic()
            if image is last_img.get(name):
                return
        else:
            return
        last_t[name], last_img[name] = t, image
        ring.write(name, resize_nearest(np.asarray(image, dtype=np.uint8), *size), t)
        self.written += 1
