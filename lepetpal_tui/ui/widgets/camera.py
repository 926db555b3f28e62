"""Camera pane: the engine's latest frame of each camera, from the shared-memory ring, at a bounded rate.

Why in the terminal: over SSH an operator cannot open a camera window, yet "is the camera pointed right,
upside down, lit, what does the policy actually see" is the first question when a policy misbehaves.

Drawing: `HalfBlockFrame` paints two pixels per cell (▀, foreground = upper pixel, background = lower)
in true colour, which every SSH terminal shows. It is our own, not textual-image's half-cell renderable,
because it can be light over SSH: colours are quantised to 6 bits, runs of equal cells share one escape
sequence, and only the rows whose cells changed are redrawn (a still arm costs nothing). Where the
terminal speaks the Kitty graphics protocol or Sixel (`ui/graphics.py` decides before the app starts,
or [ui] camera forces one), textual-image draws the picture at full resolution.

The frame is read at [ui] camera_fps (5 by default) and only while the pane is shown. `v` switches to the
policy's input: the camera after [model.camera_map] and the checkpoint's resize-with-pad
(`ui/policy_view.py`); `n` shows the next camera.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from lepetpal_tui.ui.partial_updates import cell_spans
from lepetpal_tui.ui.policy_view import DEFAULT_INPUT_HW, policy_feature, sample_resize_with_pad
from lepetpal_tui.wire import CameraStatus

if TYPE_CHECKING:
    # numpy and the frame ring (numpy too, ~0.1 s) are imported when the pane first reads a frame, not
    # before the UI's first screen.
    import numpy as np
    import numpy.typing as npt

    from lepetpal_tui.frame_ring import FrameRing, RingFrame

    Frame = npt.NDArray[np.uint8]
PAD = (24, 24, 24)  # around the picture, so the frame's own edges show


def fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest (w, h) of the aspect width:height that fits the box (square pixels)."""
    if width <= 0 or height <= 0 or box_w <= 0 or box_h <= 0:
        return 0, 0
    scale = min(box_w / width, box_h / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def sample_frame(image: Frame, box_w: int, box_h: int, policy_hw: tuple[int, int] | None) -> Frame:
    """The picture to show in a box of box_w x box_h pixels: nearest samples of the raw frame, or of the
    policy's input (exact pixels of its resize-with-pad) when `policy_hw` is given."""
    import numpy as np

    src_h, src_w = policy_hw if policy_hw is not None else image.shape[:2]
    w, h = fit(src_w, src_h, box_w, box_h)
    out = np.empty((box_h, box_w, 3), dtype=np.uint8)
    out[:] = PAD
    if w == 0:
        return out
    rows = (np.arange(h) * src_h // h).astype(np.intp)
    cols = (np.arange(w) * src_w // w).astype(np.intp)
    if policy_hw is not None:
        pic = sample_resize_with_pad(image, src_h, src_w, rows, cols)
    else:
        pic = image[rows][:, cols, :3]
    y0, x0 = (box_h - h) // 2, (box_w - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = pic
    return out


class HalfBlockFrame(Widget):
    """An RGB picture as ▀ cells in true colour; repaints only the cells whose colours changed.

    Each cell costs about 40 bytes on the wire (two true colours and the glyph), so a full repaint of a
    46x18 pane is ~33 KB. Rows are compared cell by cell against the last frame drawn, and only the
    changed spans are refreshed: the compositor then sends only the segments under them (a still
    background and table cost nothing while the arm moves in front of them)."""

    DEFAULT_CSS = "HalfBlockFrame { width: 1fr; height: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._image: Frame | None = None
        self._policy_hw: tuple[int, int] | None = None
        self._strips: list[Strip] = []
        self._pixels: Frame | None = None  # the (2h, w, 3) picture the strips show
        self._styles: dict[tuple[int, ...], Style] = {}
        self.rows_redrawn = 0  # for the bench: how much of the picture each frame repaints
        self.cells_redrawn = 0

    def set_image(self, image: Frame | None, policy_hw: tuple[int, int] | None = None) -> None:
        self._image, self._policy_hw = image, policy_hw
        self._rebuild()

    def on_resize(self) -> None:
        self._pixels = None
        self._rebuild()

    def _style(self, key: tuple[int, ...]) -> Style:
        style = self._styles.get(key)
        if style is None:
            if len(self._styles) > 8192:  # a noisy camera: do not grow without bound
                self._styles.clear()
            style = self._styles[key] = Style(
                color=Color.from_rgb(key[0], key[1], key[2]), bgcolor=Color.from_rgb(key[3], key[4], key[5])
            )
        return style

    def _rebuild(self) -> None:
        import numpy as np

        w, h = self.size.width, self.size.height
        if w <= 0 or h <= 0:
            return
        pixels: Frame
        if self._image is None:
            pixels = np.empty((2 * h, w, 3), dtype=np.uint8)
            pixels[:] = PAD
        else:
            pixels = sample_frame(self._image, w, 2 * h, self._policy_hw)
        pixels &= 0xFC  # 6 bits a channel: camera noise changes fewer cells, runs get longer
        old = self._pixels
        self._pixels = pixels
        if old is None or old.shape != pixels.shape or len(self._strips) != h:
            self._strips = [self._strip(pixels[2 * y].tolist(), pixels[2 * y + 1].tolist()) for y in range(h)]
            self.rows_redrawn += h
            self.cells_redrawn += h * w
            self.refresh()
            return
        # (h, w): a cell changed when either of its two pixels did.
        changed = (pixels != old).any(axis=2).reshape(h, 2, w).any(axis=1)
        for y in np.flatnonzero(changed.any(axis=1)).tolist():
            self._strips[y] = self._strip(pixels[2 * y].tolist(), pixels[2 * y + 1].tolist())
            self.rows_redrawn += 1
            cols = np.flatnonzero(changed[y])
            self.cells_redrawn += int(cols.size)
            for x0, x1 in cell_spans(cols.tolist()):
                self.refresh(Region(x0, y, x1 - x0, 1))

    def _strip(self, upper: list[list[int]], lower: list[list[int]]) -> Strip:
        segments: list[Segment] = []
        run_key: tuple[int, ...] | None = None
        run = 0
        for a, b in zip(upper, lower, strict=True):
            key = (a[0], a[1], a[2], b[0], b[1], b[2])
            if key == run_key:
                run += 1
                continue
            if run_key is not None:
                segments.append(Segment("▀" * run, self._style(run_key)))
            run_key, run = key, 1
        if run_key is not None:
            segments.append(Segment("▀" * run, self._style(run_key)))
        return Strip(segments, len(upper))

    def render_line(self, y: int) -> Strip:
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width)


def graphics_image_class(mode: str) -> Any:
    """textual-image's widget for "kitty" / "sixel" (None: draw half blocks ourselves). "auto" is
    resolved before the app starts (`ui/graphics.py`); left unresolved (tests) it means half blocks."""
    try:
        if mode == "kitty":
            from textual_image.widget import TGPImage

            return TGPImage
        if mode == "sixel":
            from textual_image.widget import SixelImage

            return SixelImage
    except Exception:
        return None  # no textual-image: half blocks work everywhere
    return None


class CameraPane(Vertical):
    """The newest frame of one camera, its name and age, raw or as the policy sees it."""

    DEFAULT_CSS = """
    CameraPane { height: 1fr; }
    #camera-status { height: auto; max-height: 3; color: $text-muted; }
    #camera-status.-empty { display: none; }
    #camera-info { height: 1; color: $text-muted; text-align: right; }
    """

    view: reactive[str] = reactive("raw")
    """"raw" (the camera's frame) or "policy" (what the policy is fed)."""
    camera_index: reactive[int] = reactive(0)
    ring_name: reactive[str] = reactive("")
    """The engine's frame ring (from telemetry); "" while there is none."""
    statuses: reactive[tuple[CameraStatus, ...]] = reactive(())
    status_text: reactive[Text] = reactive(Text, repaint=False)
    info_text: reactive[str] = reactive("", repaint=False)

    policy_input_hw: reactive[tuple[int, int]] = reactive(DEFAULT_INPUT_HW)
    """The checkpoint's image input (height, width), from the Model status (SmolVLA's 512x512 until known)."""

    def __init__(
        self,
        camera_names: tuple[str, ...],
        camera_map: Mapping[str, str],
        *,
        mode: str = "auto",
        fps: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.camera_names = camera_names
        self.camera_map = dict(camera_map)
        self.mode = mode
        self.fps = fps
        self.clock = clock
        self._ring: FrameRing | None = None
        self._frame: RingFrame | None = None
        self._graphics = graphics_image_class(mode)
        self.frames_drawn = 0

    def compose(self) -> ComposeResult:
        yield Static("", id="camera-status")
        if self._graphics is not None:
            yield self._graphics(id="camera-image")
        else:
            yield HalfBlockFrame(id="camera-image")
        # Size and age in a line of their own, not the border: a border change repaints the whole pane
        # (the picture included), a line only itself.
        yield Static("", id="camera-info")

    def on_mount(self) -> None:
        self.border_title = "Camera"
        self._update_titles()
        self.set_interval(1.0 / max(0.2, self.fps), self.poll)

    @property
    def camera(self) -> str:
        names = self.camera_names or ("front",)
        return names[self.camera_index % len(names)]

    # ------------------------------------------------------------------------------- watchers

    def watch_ring_name(self, name: str) -> None:
        self._detach()
        self.poll()

    def watch_view(self) -> None:
        self._draw()
        self._update_titles()

    def watch_policy_input_hw(self) -> None:
        if self.view == "policy":
            self._draw()
            self._update_titles()

    def watch_camera_index(self) -> None:
        self._frame = None
        self.poll()

    def watch_statuses(self) -> None:
        self._update_titles()

    def watch_info_text(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.query_one("#camera-info", Static).update(text, layout=False)  # one line (DEFAULT_CSS)

    def watch_status_text(self, text: Text) -> None:
        with contextlib.suppress(Exception):
            self.query_one("#camera-status", Static).update(text)

    # -------------------------------------------------------------------------------- reading

    def _detach(self) -> None:
        ring, self._ring = self._ring, None
        self._frame = None
        if ring is not None:
            with contextlib.suppress(Exception):
                ring.close()

    def on_unmount(self) -> None:
        self._detach()

    def poll(self) -> None:
        """Take the newest frame when the pane is shown and a new one is there; update its age."""
        if not self.display or not self.is_mounted:
            return
        if self._ring is None and self.ring_name:
            from lepetpal_tui.frame_ring import FrameRing

            try:
                self._ring = FrameRing.attach(self.ring_name)
            except (FileNotFoundError, ValueError):
                self._ring = None
        ring = self._ring
        if ring is not None:
            from lepetpal_tui.frame_ring import DEMAND_HOLD_S, PREVIEW

            # The engine makes frames only while a reader asks (frame_ring.py); the ask outlasts the gap
            # to the next poll, however slow [ui] camera_fps is.
            rate = max(0.2, self.fps)
            ring.want(PREVIEW, rate, hold_s=max(DEMAND_HOLD_S, 2.0 / rate))
        if ring is not None and self.camera in ring.cameras:
            newer = self._frame.seq if self._frame is not None else 0
            frame = ring.latest(self.camera, newer_than=newer)
            if frame is not None:
                self._frame = frame
                self._draw()
        self._update_titles()

    def _draw(self) -> None:
        frame = self._frame
        image = frame.image if frame is not None else None
        policy_hw = self.policy_input_hw if self.view == "policy" else None
        with contextlib.suppress(Exception):
            target: Any = self.query_one("#camera-image")
            if isinstance(target, HalfBlockFrame):
                target.set_image(image, policy_hw)
            elif image is not None:
                from PIL import Image as PILImage

                shown = image
                if policy_hw is not None:
                    from lepetpal_tui.ui.policy_view import resize_with_pad

                    shown = resize_with_pad(image, *policy_hw)
                target.image = PILImage.fromarray(shown)
            self.frames_drawn += frame is not None

    # -------------------------------------------------------------------------------- titles

    def _status(self) -> CameraStatus | None:
        for s in self.statuses:
            if s.name == self.camera:
                return s
        return None

    def _update_titles(self) -> None:
        cam = self.camera
        if self.view == "policy":
            h, w = self.policy_input_hw
            title = f"Camera {cam} → {policy_feature(cam, self.camera_map)} ({w}x{h})"
        else:
            title = f"Camera {cam} · raw"
        if self.border_title != title:  # setting a border repaints the whole pane, picture included
            self.border_title = title
        frame = self._frame
        more = "  n next" if len(self.camera_names) > 1 else ""
        subtitle = f"c hide  v view{more}"
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle
        age_line = ""
        if frame is not None:
            age = max(0.0, self.clock() - frame.t)
            h, w = frame.image.shape[:2]
            age_line = f"{w}x{h} · frame {age:.1f} s old"
        self.info_text = age_line
        status = self._status()
        text = Text()
        info = True  # only helpful: hidden on tiny terminals (app.tcss)
        if status is not None and status.failed_reason:
            info = False
            text.append(f"{cam}: {status.failed_reason}", style="bold red")
            text.append("\nShowing the synthetic fallback (what dry-run and the simulated arm would feed the policy).")
            self.set_class(True, "-failed")
        else:
            self.set_class(False, "-failed")
            if not self.ring_name:
                text.append("No frames yet: the engine sends them once its cameras are open.")
            elif frame is None:
                text.append(f"Waiting for the first frame of {cam}.")
            elif status is not None and status.kind == "synthetic":
                text.append("Synthetic scene: the simulated arm drawn from its measured joints.")
        self.status_text = text
        with contextlib.suppress(Exception):
            line = self.query_one("#camera-status", Static)
            line.set_class(not text.plain, "-empty")
            line.set_class(info, "-info")
