"""Camera frames for the policy: LeRobot's OpenCVCamera, or a deterministic synthetic scene.

`open_camera(name, settings, on_event)` returns a FrameSource whose `latest()` never blocks: OpenCV frames
are read by LeRobot's background thread (latest-frame semantics); synthetic frames are rendered on
demand: `source = "synthetic"` is the scene camera (the arm drawn from its measured joints, see
`sim/scene.py`) when the engine gives it the joints, and `source = "pattern"` the older moving ball, a
function of the clock only. Every frame carries its capture time. When a real camera fails to open or stops
delivering, the source reports why through `on_event`, keeps it in `failed_reason` and returns None from
then on: it never substitutes a frame itself. Whether a synthetic scene may stand in is the engine's
decision (only for dry-run, the simulated arm or a start the operator confirmed), because a policy fed a
picture that is not the room acts blind.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lepetpal_tui.settings import CameraSettings
from lepetpal_tui.wire import CapturedFrame, EngineEvent

Frame = npt.NDArray[np.uint8]
EventFn = Callable[[EngineEvent], None]

# A real camera whose newest frame is older than this is treated as lost.
STALE_AFTER_S = 2.0


class FrameSource(Protocol):
    name: str

    @property
    def failed_reason(self) -> str:
        """Why the configured camera is not delivering ("" when it is)."""
        ...

    @property
    def kind(self) -> str:
        """"opencv", "video" or "synthetic" (what frames come from right now)."""
        ...

    def latest(self) -> CapturedFrame | None:
        """The newest frame (H x W x 3 uint8 RGB) with its capture time; None when there is none, or the
        camera failed. Never blocks."""
        ...

    def close(self) -> None: ...


# -------------------------------------------------------------------------------------------- synthetic


class SyntheticCamera:
    """A ball moving over a checkered table, a function of time only: deterministic and cheap.

    `frame_at(i)` renders frame number i; `latest()` renders the frame for the current time.
    """

    kind = "synthetic"

    def __init__(self, name: str, width: int = 640, height: int = 480, fps: int = 30) -> None:
        self.name = name
        self.width, self.height, self.fps = int(width), int(height), max(1, int(fps))
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._cache: tuple[int, Frame] | None = None
        self._background = self._render_background()
        yy, xx = np.mgrid[0:self.height, 0:self.width]
        self._yy, self._xx = yy.astype(np.float32), xx.astype(np.float32)

    @property
    def failed_reason(self) -> str:
        return ""

    def _render_background(self) -> Frame:
        h, w = self.height, self.width
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = (170, 190, 215)  # wall
        table_top = int(h * 0.45)
        tile = max(4, w // 16)
        yy, xx = np.mgrid[0 : h - table_top, 0:w]
        checks = ((yy // tile + xx // tile) % 2).astype(bool)
        table = np.where(checks[..., None], np.uint8(150), np.uint8(120)).astype(np.uint8)
        table = np.repeat(table, 3, axis=2)
        table[..., 0] = np.clip(table[..., 0].astype(np.int16) + 40, 0, 255).astype(np.uint8)  # wood tint
        img[table_top:] = table
        return img

    def frame_at(self, index: int) -> Frame:
        t = index / self.fps
        h, w = self.height, self.width
        # The ball circles over the table; the period is 6 s.
        cx = w * (0.5 + 0.32 * math.cos(2 * math.pi * t / 6.0))
        cy = h * (0.70 + 0.12 * math.sin(2 * math.pi * t / 6.0))
        r = max(3.0, min(w, h) * 0.06)
        img = self._background.copy()
        # Only the box around ball and shadow (2 r): 0.2 ms instead of 3.5 ms for 640x480, same pixels.
        # The frame ring renders every frame in the engine process, where numpy work delays the tick.
        y0, y1 = max(0, int(cy - 2 * r) - 1), min(h, int(cy + 2 * r) + 2)
        x0, x1 = max(0, int(cx - 2 * r) - 1), min(w, int(cx + 2 * r) + 2)
        xx, yy, box = self._xx[y0:y1, x0:x1], self._yy[y0:y1, x0:x1], img[y0:y1, x0:x1]
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        shadow = ((xx - cx - r * 0.4) ** 2 + ((yy - cy - r * 0.9) * 2.0) ** 2) < r * r
        box[shadow] = (box[shadow] * 0.6).astype(np.uint8)
        box[d2 < r * r] = (220, 40, 40)
        # A small frame counter strip at the top-left keeps frames distinguishable for tests.
        img[0:2, 0:32] = ((index * 37) % 256, (index * 11) % 256, 0)
        return img

    def latest_image(self) -> Frame:
        index = int((time.monotonic() - self._t0) * self.fps)
        with self._lock:
            if self._cache is not None and self._cache[0] == index:
                return self._cache[1]
        frame = self.frame_at(index)
        with self._lock:
            self._cache = (index, frame)
        return frame

    def latest(self) -> CapturedFrame:
        return CapturedFrame(self.latest_image(), time.monotonic())

    def close(self) -> None:
        pass


class SceneCamera:
    """The arm drawn from its measured joints (`sim.scene.SceneRenderer`): it moves when the arm moves.

    `joints()` returns the latest measured joints (None before the first read: the rest pose is drawn).
    Rendering is cached on the pose, so a still arm costs a tuple comparison per frame. A new pose is
    drawn in the renderer's own process (`sim.scene_process`), off the engine's GIL; where that process
    cannot start or stops answering, in this process from then on (the same picture; only the tick's
    jitter pays), and `renderer` says which.
    """

    kind = "synthetic"

    def __init__(
        self, name: str, width: int, height: int, joints: Callable[[], npt.NDArray[np.float64] | None],
        *, own_process: bool = True,
    ) -> None:
        from lepetpal_tui.sim.scene import SceneRenderer
        from lepetpal_tui.sim.scene_process import SceneProcessError, SceneRendererProcess

        self.name = name
        self.width, self.height = int(width), int(height)
        self._joints = joints
        self._lock = threading.Lock()  # the inference thread and the frame ring's thread both render
        self._key: tuple[int, ...] | None = None
        self._last: Frame | None = None
        self._local: SceneRenderer | None = None
        self._remote: SceneRendererProcess | None = None
        self.fallback_reason = ""  # why frames are drawn in this process ("" while the renderer process draws)
        if own_process:
            try:
                self._remote = SceneRendererProcess(self.width, self.height)
            except SceneProcessError as exc:
                self.fallback_reason = str(exc)
        else:
            self.fallback_reason = "asked to render in this process"

    @property
    def failed_reason(self) -> str:
        return ""

    @property
    def renderer(self) -> str:
        """"process" while the renderer process draws, "in-process" after a fallback."""
        return "process" if self._remote is not None else "in-process"

    def latest_image(self) -> Frame:
        from lepetpal_tui.sim.scene import pose, pose_key

        q = pose(self._joints())
        key = pose_key(q)
        with self._lock:
            if key == self._key and self._last is not None:
                return self._last
            self._last, self._key = self._render(q), key
            return self._last

    def _render(self, q: npt.NDArray[np.float64]) -> Frame:
        from lepetpal_tui.sim.scene import SceneRenderer
        from lepetpal_tui.sim.scene_process import SceneProcessError

        remote = self._remote
        if remote is not None:
            try:
                return remote.render(q)
            except SceneProcessError as exc:
                self.fallback_reason = str(exc)
                self._remote = None
                # The engine's output file: the tick's jitter figures change, the picture does not.
                print(f'camera "{self.name}": {exc}; drawing the scene in the engine process from now on',
                      file=sys.stderr, flush=True)
                threading.Thread(target=remote.close, daemon=True).start()
        if self._local is None:
            self._local = SceneRenderer(self.width, self.height)
        return self._local.render(q)

    def latest(self) -> CapturedFrame:
        return CapturedFrame(self.latest_image(), time.monotonic())

    def close(self) -> None:
        remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()


# ----------------------------------------------------------------------------------------------- opencv


def _make_opencv_camera(source: int | Path, settings: CameraSettings, is_file: bool) -> Any:
    """Build LeRobot's OpenCVCamera; video files are paced at their own fps and loop at the end."""
    import cv2
    from lerobot.cameras.opencv import OpenCVCamera, OpenCVCameraConfig

    class LoopingFileCamera(OpenCVCamera):  # type: ignore[misc]
        _next_t = 0.0

        def _read_from_hardware(self) -> Any:
            # A file decodes far faster than real time: pace it and rewind at the end.
            period = 1.0 / float(self.fps or 30)
            now = time.perf_counter()
            if self._next_t > now:
                time.sleep(self._next_t - now)
            self._next_t = max(now, self._next_t) + period
            cap = self.videocapture
            ok, frame = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"{self} cannot read frames from the video file")
            return frame

    if is_file:
        cfg = OpenCVCameraConfig(index_or_path=source, warmup_s=0)
        return LoopingFileCamera(cfg)
    cfg = OpenCVCameraConfig(
        index_or_path=source, fps=settings.fps, width=settings.width, height=settings.height, warmup_s=1
    )
    return OpenCVCamera(cfg)


class OpenCVFrameSource:
    """LeRobot OpenCVCamera with latest-frame reads; reports a failure and then gives no frames."""

    def __init__(
        self,
        name: str,
        settings: CameraSettings,
        on_event: EventFn,
        *,
        fallback_synthetic: bool = True,
    ) -> None:
        self.name = name
        self.settings = settings
        self._on_event = on_event
        self._fallback_ok = fallback_synthetic  # only changes what the failure event says
        self._lock = threading.Lock()
        self._failed = ""
        self._last: _Latest | None = None
        self._cam: Any = None
        self._connected_at = 0.0
        source = settings.source
        self._is_file = isinstance(source, str)
        self._kind = "video" if self._is_file else "opencv"
        self._describe = f"video file {source}" if self._is_file else f"camera device {source}"

    def connect(self) -> None:
        source = self.settings.source
        if isinstance(source, str) and not Path(source).expanduser().exists():
            self._fail(
                f'camera "{self.name}": {self._describe} does not exist',
                f'Fix [cameras.{self.name}] source (a device index like 0, a video file path, or "synthetic").',
            )
            return
        target: int | Path = Path(source).expanduser() if isinstance(source, str) else source
        try:
            cam = _make_opencv_camera(target, self.settings, self._is_file)
            cam.connect()
        except Exception as exc:
            self._fail(
                f'camera "{self.name}": {self._describe} failed to open ({type(exc).__name__}: {exc})',
                f"Check that the camera is plugged in and not used by another program "
                f"(`lerobot-find-cameras opencv` lists them), or fix [cameras.{self.name}] "
                "source/width/height/fps.",
            )
            return
        self._cam = cam
        self._connected_at = time.monotonic()

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def failed_reason(self) -> str:
        return self._failed

    def _fail(self, reason: str, fix: str) -> None:
        with self._lock:
            if self._failed:
                return
            self._failed = reason
        suffix = (
            "; a live arm holds (dry-run and the simulated arm may go on with the synthetic scene)"
            if self._fallback_ok
            else "; the arm holds"
        )
        self._on_event(EngineEvent(t=time.monotonic(), level="error", message=reason + suffix, fix=fix))
        cam, self._cam = self._cam, None
        if cam is not None:
            threading.Thread(target=_quiet_disconnect, args=(cam,), daemon=True).start()

    def latest(self) -> CapturedFrame | None:
        cam = self._cam
        if cam is None or self._failed:
            return None
        try:
            frame = cam.read_latest(max_age_ms=int(STALE_AFTER_S * 1000))
        except Exception as exc:
            starting = time.monotonic() - self._connected_at < STALE_AFTER_S
            if self._last is None and starting and cam.thread is not None and cam.thread.is_alive():
                return None  # still starting up: no frame yet
            self._fail(
                f'camera "{self.name}": {self._describe} stopped delivering frames ({exc})',
                "Check the cable and that no other program took the camera, then restart the session.",
            )
            return None
        last = self._last
        if last is not None and frame is last.image_source:
            return last.frame  # the same picture as before: keep its capture time, so it ages
        captured = _capture_time(cam)
        self._last = _Latest(frame, CapturedFrame(np.ascontiguousarray(frame, dtype=np.uint8), captured))
        return self._last.frame

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _quiet_disconnect(cam)


@dataclass(frozen=True)
class _Latest:
    image_source: Any  # the array LeRobot handed out (identity tells a new frame from the old one)
    frame: CapturedFrame


def _capture_time(cam: Any) -> float:
    """When LeRobot's reader thread stored the frame, on the monotonic clock (now, if it does not say)."""
    stamp = getattr(cam, "latest_timestamp", None)
    now = time.monotonic()
    if isinstance(stamp, float):
        # LeRobot stamps with perf_counter: shift it onto the monotonic clock (same clock on Linux).
        return min(now, now - (time.perf_counter() - stamp))
    return now


def _quiet_disconnect(cam: Any) -> None:
    try:
        if cam.is_connected:
            cam.disconnect()
    except Exception:
        pass  # closing a failed camera must never raise


def open_camera(
    name: str,
    settings: CameraSettings,
    on_event: EventFn,
    *,
    fallback_synthetic: bool = True,
    joints: Callable[[], npt.NDArray[np.float64] | None] | None = None,
) -> FrameSource:
    """Open the camera `name` described by `settings` ([cameras.<name>]). `joints` (the engine's latest
    measured joints) turns "synthetic" into the scene camera; without it, or with "pattern", the moving
    ball is drawn."""
    if settings.source == "synthetic" and joints is not None:
        return SceneCamera(name, settings.width, settings.height, joints)
    if settings.source in ("synthetic", "pattern"):
        return SyntheticCamera(name, settings.width, settings.height, settings.fps)
    src = OpenCVFrameSource(name, settings, on_event, fallback_synthetic=fallback_synthetic)
    src.connect()
    return src
