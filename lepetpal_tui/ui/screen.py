"""The operator screen: it owns the layout, the panes and the screen's own keys; the app owns the engine.

Why a Screen of its own: telemetry must reach the panes while a dialog, the command palette or an open
select is the active screen, so the app used to find them through `screen_stack[0]`. Holding the screen
(and typed handles on its panes) says that directly, and keeps the layout rules in one place:

- wide terminals (at least WIDE_COLS columns) show the Camera pane as a third column beside the joints;
- narrower ones (80x24 included) hide it until `c`, and then it takes the place of the Port and Model
  panes (the port list and the model's state are the least needed while watching the arm).

Redrawing: `show(store)` hands each pane its part of the store; the panes keep them in reactives, so a
pane whose data did not change repaints nothing.

The first screen comes in two steps (issue 15: first screen <= 0.5 s on a 2-core CPU). `compose` yields
what an operator needs at once and what fixes the layout: the banner, the joints, the task field, the
recording line, the footer and the empty columns and log slot. Right after that first paint, `_mount_rest`
imports and mounts the Port, Model, Latency, Camera and Log panes into their places (the columns keep
their sizes, so nothing jumps), and only then posts `Ready`: the app starts the engine, the timers and the
port scan once every pane is there.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input

from lepetpal_tui.settings import Settings
from lepetpal_tui.ui.store import TelemetryStore
from lepetpal_tui.ui.widgets.banner import StateBanner
from lepetpal_tui.ui.widgets.joints import JointsPane
from lepetpal_tui.ui.widgets.keys import KeysBar
from lepetpal_tui.ui.widgets.recording import RecordingLine
from lepetpal_tui.ui.widgets.task import TaskPane
from lepetpal_tui.wire import EngineState, PortInfo

if TYPE_CHECKING:  # mounted after the first paint (see `_mount_rest`), imported there
    from lepetpal_tui.ui.widgets.camera import CameraPane
    from lepetpal_tui.ui.widgets.latency import LatencyPane
    from lepetpal_tui.ui.widgets.log import EventLog
    from lepetpal_tui.ui.widgets.model import ModelPane
    from lepetpal_tui.ui.widgets.ports import PortPane

WIDE_COLS = 150  # from here the camera gets a column of its own and is shown from the start
SHORT_ROWS = 36
TINY_ROWS = 30  # 80x24 and the like: compact panes (see app.tcss)
FOOTER_COLS = 120  # below this the one-row footer cannot show every key: the wrapped key bar does


class OperatorScreen(Screen[None]):
    """Banner, ports, model, joints, latency, camera, task, log and footer."""

    class Ready(Message):
        """The screen and its panes are mounted: the app may draw into them and start the engine."""

    def __init__(self, settings: Settings, t0: float, clock: Any) -> None:
        super().__init__(id="operator")
        self.settings = settings
        self.t0 = t0
        self.clock = clock
        # None: follow the terminal's width; True/False: the operator chose with `c`.
        self.camera_choice: bool | None = False if settings.ui.camera == "off" else None
        self._panes: dict[str, Widget] = {}
        self.complete = False  # every pane is mounted (after the first paint): `Ready` has been posted
        self.first_paint: float | None = None  # time.time() of the first paint (the bench reads it)

    def compose(self) -> ComposeResult:
        s = self.settings
        yield StateBanner(id="banner")
        with Horizontal(id="top"):
            yield Vertical(id="left")  # Port and Model panes, after the first paint
            with Vertical(id="right"):
                yield JointsPane(s.arm.limits, s.safety, id="joints")
                # the Latency pane below, after the first paint
            yield Vertical(id="camera-slot")  # the Camera pane's column, after the first paint
        yield TaskPane(id="task")
        yield RecordingLine(id="recording")
        yield Vertical(id="log-slot")  # the event log, after the first paint
        yield Footer(id="footer", compact=True, show_command_palette=False)
        yield KeysBar(id="keys")

    def on_mount(self) -> None:
        self._layout_camera()
        # Typing goes to the task field from the first paint (stray letters must not become macro keys),
        # and with a focused widget the footer shows its keys at once.
        self.task_input.focus()
        self.call_after_refresh(self._after_first_paint)

    def _after_first_paint(self) -> None:
        self.first_paint = time.time()
        # A task of its own: awaited here, the mounts would hold up the other after-refresh callbacks
        # (the footer's keys among them) until every pane is in.
        self.run_worker(self._mount_rest(), name="mount-rest", exclusive=True)

    async def _mount_rest(self) -> None:
        """Mount the panes the first paint did without, then tell the app the screen is ready."""
        from lepetpal_tui.ui.widgets.camera import CameraPane
        from lepetpal_tui.ui.widgets.latency import LatencyPane
        from lepetpal_tui.ui.widgets.log import EventLog
        from lepetpal_tui.ui.widgets.model import ModelPane
        from lepetpal_tui.ui.widgets.ports import PortPane

        s = self.settings
        camera = CameraPane(tuple(s.cameras), s.model.camera_map, mode=s.ui.camera, fps=s.ui.camera_fps,
                            clock=self.clock, id="camera")
        camera.display = False  # until `_layout_camera` decides: a hidden pane reads no frames
        await self.query_one("#left").mount(PortPane(id="ports"), ModelPane(s.model.path, id="model"))
        await self.query_one("#right").mount(LatencyPane(s.control.rate_hz, id="latency"))
        await self.query_one("#camera-slot").mount(camera)
        await self.query_one("#log-slot").mount(EventLog(self.t0, id="log"))
        self.complete = True
        self._layout_camera()
        self.post_message(self.Ready())

    # ------------------------------------------------------------------------------ handles

    def _pane(self, pane_id: str) -> Widget:
        """The one pane with this id, looked up once: the panes are mounted once and never replaced,
        and the redraw asks for each of them ten times a second. NoMatches before `Ready`."""
        pane = self._panes.get(pane_id)
        if pane is None:
            pane = self._panes[pane_id] = self.query_one(f"#{pane_id}")
        return pane

    @property
    def banner(self) -> StateBanner:
        return cast(StateBanner, self._pane("banner"))

    @property
    def joints(self) -> JointsPane:
        return cast(JointsPane, self._pane("joints"))

    @property
    def latency(self) -> LatencyPane:
        return cast("LatencyPane", self._pane("latency"))

    @property
    def model(self) -> ModelPane:
        return cast("ModelPane", self._pane("model"))

    @property
    def ports(self) -> PortPane:
        return cast("PortPane", self._pane("ports"))

    @property
    def camera(self) -> CameraPane:
        return cast("CameraPane", self._pane("camera"))

    @property
    def event_log(self) -> EventLog:
        return cast("EventLog", self._pane("log"))

    @property
    def task_input(self) -> Input:
        return self.query_one("#task-input", Input)

    # ------------------------------------------------------------------------------ layout

    def on_resize(self) -> None:
        self.app.set_class(self.size.height < SHORT_ROWS, "-short")
        self.app.set_class(self.size.height < TINY_ROWS, "-tiny")
        narrow_footer = self.size.width < FOOTER_COLS
        self.query_one(Footer).display = not narrow_footer
        self.query_one(KeysBar).display = narrow_footer
        self._layout_camera()

    @property
    def wide(self) -> bool:
        return self.size.width >= WIDE_COLS

    @property
    def camera_shown(self) -> bool:
        return self.wide if self.camera_choice is None else self.camera_choice

    def _layout_camera(self) -> None:
        shown = self.camera_shown
        self.set_class(shown, "-camera")
        self.set_class(not self.wide, "-narrow")
        self.query_one("#camera-slot").display = shown
        self.query_one("#left").display = not (shown and not self.wide)
        if not self.complete:  # the first paint: the columns are laid out, the panes come right after
            return
        self.camera.display = shown
        if shown:
            self.camera.poll()

    def action_toggle_camera(self) -> None:
        self.camera_choice = not self.camera_shown
        self._layout_camera()

    def action_camera_view(self) -> None:
        if not self.complete:
            return
        cam = self.camera
        cam.view = "policy" if cam.view == "raw" else "raw"
        if not self.camera_shown:
            self.action_toggle_camera()

    def action_next_camera(self) -> None:
        if self.complete:
            self.camera.camera_index += 1

    # ------------------------------------------------------------------------------ drawing

    def show(self, store: TelemetryStore, port: str) -> None:
        """Hand each pane its part of the store (they repaint only what changed)."""
        shown_port = "" if store.state == EngineState.DISCONNECTED else port
        self.banner.show(store.state, task=store.task, reason=store.hold_reason, port=shown_port)
        self.joints.show(store.latest_tick, store.health, store.dry_run, store.plan_ahead)
        self.model.show(store.model)
        cast(RecordingLine, self._pane("recording")).show(store.recording)
        cam = self.camera
        cam.ring_name = store.frame_ring
        cam.statuses = store.cameras
        size = store.model.image_size if store.model is not None else ()
        if len(size) == 2:
            cam.policy_input_hw = (int(size[0]), int(size[1]))

    def show_latency(self, store: TelemetryStore, now: float | None) -> None:
        self.latency.show(store, now)

    def add_events(self, store: TelemetryStore) -> None:
        log = self.event_log
        for event in store.take_events():
            log.add_event(event)

    def log_line(self, t: float, level: str, message: str, fix: str = "") -> None:
        self.event_log.add(t, level, message, fix)

    def set_ports(self, ports: list[PortInfo], error: str, preferred: str) -> None:
        self.ports.set_ports(ports, error, preferred=preferred)

    def set_connected(self, port: str) -> None:
        self.ports.set_connected(port)
