"""Writes the engine's camera frames into a frame ring, for the recorder (and any other reader).

Stop-gap until issue 15's engine writes its cameras into the ring itself: then `RecordFeed` takes that
ring's name and this module goes. A thread of its own in the engine process, off the tick path: at twice
each camera's rate it takes the camera's newest frame (`latest()` never blocks) and, when it is a new
one, copies it into the ring (one memcpy; `FrameRing.write` never blocks either).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from lepetpal_tui.config import Settings
from lepetpal_tui.frame_ring import FrameRing


def ring_for(settings: Settings) -> FrameRing:
    return FrameRing.create({n: (c.height, c.width) for n, c in settings.cameras.items()})


class RingFeeder:
    def __init__(self, ring: FrameRing, cameras: Callable[[], Mapping[str, Any]], fps: float,
                 on_problem: Callable[[str], None], active: Callable[[], bool] = lambda: True) -> None:
        self.ring = ring
        self._active = active  # copy frames only while recording (a synthetic frame costs 3.5 ms to render)
        self._cameras = cameras
        self._period = 0.5 / max(1.0, fps)
        self._on_problem = on_problem
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-frame-ring", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: dict[str, Any] = {}
        refused: set[str] = set()
        while not self._stop.wait(self._period):
            if not self._active():
                continue
            for name, cam in list(self._cameras().items()):
                if name in refused or name not in self.ring.cameras:
                    continue
                try:
                    frame = cam.latest()
                except Exception:
                    continue
                if frame is None or frame.image is last.get(name):
                    continue
                last[name] = frame.image
                try:
                    self.ring.write(name, frame.image, frame.t)
                except ValueError as exc:
                    refused.add(name)
                    self._on_problem(f"Recording gets no frames from camera {name}: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        with contextlib.suppress(Exception):
            self.ring.close()
        with contextlib.suppress(Exception):
            self.ring.unlink()
