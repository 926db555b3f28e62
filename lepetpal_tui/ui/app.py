"""LePetPalApp: the operator's screen. It never blocks and never imports torch.

One thread worker owns the engine link: it starts the simulated arm when asked, spawns the engine, polls
telemetry into an inbox and posts a coalescing `TelemetryArrived`. The UI thread folds the inbox into a
`TelemetryStore`; a timer redraws from the store at a bounded rate. Commands go straight to the link
(`send` does not block), so an e-stop never waits for the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.worker import Worker, get_current_worker

from lepetpal_tui.settings import Settings, replace_setting
from lepetpal_tui.ui import partial_updates
from lepetpal_tui.ui.link import (
    EngineLink,
    LinkFactory,
    PortLister,
    SimFactory,
    SimHandle,
    list_serial_ports,
    spawn_engine,
)
from lepetpal_tui.ui.messages import EngineClosed, EngineFailed, EngineStarted, PortsListed, TelemetryArrived
from lepetpal_tui.ui.screen import OperatorScreen
from lepetpal_tui.ui.store import TelemetryStore
from lepetpal_tui.ui.widgets.confirm import ConfirmScreen
from lepetpal_tui.ui.widgets.ports import PortPane
from lepetpal_tui.ui.widgets.task import TaskPane
from lepetpal_tui.wire import (
    OUTCOMES,
    RECORDER_CLOSE_S,
    Command,
    EngineState,
    EStop,
    Heartbeat,
    MarkEpisode,
    Rearm,
    RunMacro,
    SetDryRun,
    SetRecording,
    SetTask,
    Start,
    Stop,
    TelemetryBatch,
    UiLost,
    command_name,
)

STATS_ENV = "LEPETPAL_UI_STATS"  # path: write first-paint time and redraw counts there (bench)
POLL_S = 0.05
# The engine holds when no heartbeat arrives for safety.ui_heartbeat_s (about 1 s): send four a second
# so a slow frame or two never trips it, while a frozen event loop does.
HEARTBEAT_S = 0.25


def terminal_hung_up_on(fd: int) -> bool:
    """Whether the terminal on `fd` is gone: its other end closed (a pty whose master went away), so the
    tty answers EIO. That can happen without a SIGHUP (a terminal program that was not our session's
    controlling terminal), and then Textual's input thread reads EOF in a loop and nobody sees the
    screen. Not a terminal (tests, pipes): False."""
    try:
        termios.tcgetattr(fd)
    except termios.error as exc:
        return bool(exc.args) and exc.args[0] == errno.EIO
    except (OSError, ValueError):
        return False
    return False


def _engine_fix(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return "This build has no engine yet; reinstall lepetpal (pip install -e .) and retry."
    if isinstance(exc, PermissionError):
        return "Add yourself to the 'dialout' group (sudo usermod -aG dialout $USER), log in again, retry."
    if isinstance(exc, FileNotFoundError):
        return "Check the cable and the port name (lepetpal ports), or run with --sim."
    return "Check the log above, fix the setting it names (lepetpal config), then press Connect."


class LePetPalApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "LePetPal"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        # Priority: they fire whatever has focus (dialogs, open select, command palette included).
        Binding("f12", "estop", "E-STOP", priority=True, key_display="F12"),
        Binding("space", "estop", "E-STOP", priority=True, show=False),
        Binding("f11", "estop_torque_off", "Torque off!", priority=True, key_display="F11",
                tooltip="Stronger stop: torque off, the arm falls under gravity"),
        Binding("f5", "start", "Start", priority=True, key_display="F5"),
        Binding("f6", "stop", "Stop", priority=True, key_display="F6"),
        Binding("d", "toggle_dry_run", "Dry-run"),
        Binding("r", "rearm", "Re-arm"),
        Binding("h", "macro('home')", "Home"),
        Binding("t", "macro('throw')", "Throw"),
        # The camera pane's keys (the operator screen's actions), after the safety keys in the footer.
        Binding("c", "toggle_camera", "Camera"),
        Binding("v", "camera_view", "Raw/policy"),
        Binding("n", "next_camera", "Next camera", show=False),
        Binding("f9", "toggle_recording", "Record", priority=True, key_display="F9", show=False),
        Binding("s", "mark('success')", "Mark success", show=False),
        Binding("f", "mark('failure')", "Mark failure", show=False),
        # ctrl+q is the one shown: it works while typing in the task field too, where `q` is just a letter.
        Binding("q", "quit", "Quit", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True, key_display="^Q"),
        Binding("escape", "leave_field", "Leave field", show=False),
        Binding("enter", "focus_task", "Task field", show=False),
    ]

    def __init__(
        self,
        settings: Settings,
        *,
        link_factory: LinkFactory = spawn_engine,
        # None: the engine starts the simulated arm itself, so that both outlive this process (a hangup).
        sim_factory: SimFactory | None = None,
        port_lister: PortLister = list_serial_ports,
        clock: Callable[[], float] = time.monotonic,
        refresh_hz: float = 10.0,
        autoconnect: bool = True,
        animations: bool = True,
    ) -> None:
        super().__init__()
        # multiprocessing's resource tracker passes sys.stderr.fileno() to its child; under Textual that is
        # -1 ("bad value(s) in fds_to_keep"), so start it now, while stderr is still the real one.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        partial_updates.install()  # partial repaints send only what changed (see the module)
        self.settings = settings
        self.link_factory = link_factory
        self.sim_factory = sim_factory
        self.port_lister = port_lister
        self.clock = clock
        self.refresh_hz = refresh_hz
        self.autoconnect = autoconnect
        self.animations = animations
        self.t0 = clock()
        self.store = TelemetryStore()
        self.link: EngineLink | None = None
        self.port = ""  # the port the current engine uses ("sim" for the simulated arm)
        self.redraws = 0
        self._inbox: list[TelemetryBatch] = []
        self._inbox_lock = threading.Lock()
        self._drawn_version = -1
        self._engine_worker: Worker[None] | None = None
        self._close_go_home = False
        self._quitting = False
        self._pending_connect: str | None = None
        self._full_paint: float | None = None
        self._tty_fd: int | None = None  # the terminal checked for a hangup with each heartbeat
        self._abandoned = False  # the UI is going away without a quit: the engine takes the UI-lost path
        self.hard_exit: Callable[[int], None] = os._exit
        self.operator = OperatorScreen(settings, self.t0, clock)

    # ------------------------------------------------------------------------------------------ layout

    def get_default_screen(self) -> Screen[Any]:
        """The app owns the operator screen: telemetry reaches its panes whatever screen is active (a
        dialog, the command palette or an open select)."""
        return self.operator

    @property
    def main(self) -> OperatorScreen:
        """The operator screen (the name tests and older code use)."""
        return self.operator

    @on(OperatorScreen.Ready)
    def _operator_ready(self) -> None:
        if not self.animations:
            self.operator.task_input.cursor_blink = False
        self.store.set_state(EngineState.DISCONNECTED, "")
        self.redraw()
        self.log_ui("info", f"settings: {self.settings.source_path or 'built-in defaults'}")
        self.set_interval(1.0 / self.refresh_hz, lambda: self.redraw(throttled=True))
        # From the event loop itself, not a thread: a hung loop must stop the heartbeat.
        self.set_interval(HEARTBEAT_S, self._send_heartbeat)
        self.scan_ports()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.terminal_hung_up)
        # The same hand-over when the terminal goes without a SIGHUP (checked with each heartbeat).
        stdin = sys.__stdin__
        if not self.is_headless and stdin is not None and stdin.isatty():
            self._tty_fd = stdin.fileno()
        if self.autoconnect:
            self.connect(self.settings.arm.port)
        # Typing goes to the task field first: stray letters must not become macro keys.
        self.operator.task_input.focus()
        self.call_after_refresh(self._painted)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The operator's actions in the command palette (ctrl+p), next to Textual's own."""
        yield SystemCommand("E-stop", "Latch a hold: nothing is written to the arm (F12)", self.action_estop)
        yield SystemCommand("Start", "Start the policy with the typed task (F5)", self.action_start)
        yield SystemCommand("Stop", "Stop the policy; the arm holds its pose (F6)", self.action_stop)
        yield SystemCommand("Dry-run on/off", "Run the policy without moving the arm (d)", self.action_toggle_dry_run)
        yield SystemCommand("Re-arm", "Leave e-stop, after a confirmation (r)", self.action_rearm)
        for name in self.settings.macros:
            yield SystemCommand(f"Macro: {name}", f"Run the {name} macro from lepetpal.toml",
                                lambda n=name: self.action_macro(n))
        yield SystemCommand("Refresh ports", "Scan serial ports for an SO-101", self.scan_ports)
        yield from super().get_system_commands(screen)

    def _painted(self) -> None:
        """Every pane is mounted and painted (the first paint, with fewer panes, came before)."""
        self._full_paint = time.time()
        self._write_stats()

    def _write_stats(self) -> None:
        path = os.environ.get(STATS_ENV)
        if not path:
            return
        data = {
            "first_paint_unix": self.operator.first_paint,
            "full_screen_unix": self._full_paint,
            "redraws": self.redraws,
            "batches": self.store.batches,
            "camera_frames": self.operator.camera.frames_drawn if self.operator.complete else 0,
            "written_unix": time.time(),
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)

    # ------------------------------------------------------------------------------------------ engine

    def connect(self, port: str) -> None:
        """(Re)start the engine on `port`; an engine already running is closed first."""
        if self._engine_worker is not None and self._engine_worker.is_running:
            self._pending_connect = port
            self.log_ui("info", f"closing the engine on {self.port} to connect to {port}")
            self._stop_engine(go_home=False)
            return
        self.port = port
        self.store.set_state(EngineState.CONNECTING, "")
        self._set_connected("")
        self.log_ui("info", f"starting the engine on {'the simulated arm' if port == 'sim' else port}")
        self.redraw()
        self._engine_worker = self._run_engine(port)

    @work(thread=True, exclusive=True, group="engine", name="engine")
    def _run_engine(self, port: str) -> None:
        worker = get_current_worker()
        sim: SimHandle | None = None
        link: EngineLink | None = None
        try:
            settings = replace_setting(self.settings, "arm.port", port)
            sim_port: str | None = None
            if settings.is_sim and self.sim_factory is not None:
                sim = self.sim_factory()
                sim_port = sim.port
            if worker.is_cancelled:
                return
            link = self.link_factory(settings, sim_port)
        except Exception as exc:  # shown to the operator with a fix; the app keeps running
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}", _engine_fix(exc)))
            if sim is not None:
                sim.stop()
            self.post_message(EngineClosed())
            return
        self.link = link
        self.post_message(EngineStarted(sim_port or port))
        try:
            while not worker.is_cancelled and not self._abandoned:
                batches = link.poll(POLL_S)
                if batches:
                    with self._inbox_lock:
                        self._inbox.extend(batches)
                    self.post_message(TelemetryArrived())
                if not link.alive:
                    self.post_message(
                        EngineFailed(
                            "The engine process exited.",
                            "Read the last log lines for the reason, then press Connect to restart it.",
                        )
                    )
                    break
        finally:
            self.link = None
            try:
                # Abandoned: the engine already knows why the UI left and holds; a quit would skip that.
                last = None if self._abandoned else link.close(go_home=self._close_go_home, timeout=5.0)
                if last:
                    with self._inbox_lock:
                        self._inbox.extend(last)
                    self.post_message(TelemetryArrived())
            except Exception as exc:
                self.post_message(EngineFailed(f"closing the engine: {exc}", ""))
            if sim is not None:
                sim.stop()
            self.post_message(EngineClosed())

    def _stop_engine(self, go_home: bool) -> None:
        self._close_go_home = go_home
        if self._engine_worker is not None:
            self._engine_worker.cancel()

    @on(TelemetryArrived)
    def _fold_telemetry(self) -> None:
        with self._inbox_lock:
            batches, self._inbox = self._inbox, []
        for batch in batches:
            self.store.apply(batch)

    @on(EngineStarted)
    def _engine_started(self, message: EngineStarted) -> None:
        self._set_connected(self.port)
        where = "simulated arm on " + message.port if self.port == "sim" else message.port
        self.log_ui("info", f"engine started ({where})")

    @on(EngineFailed)
    def _engine_failed(self, message: EngineFailed) -> None:
        self.log_ui("error", message.reason, message.fix)
        if not self._quitting:
            self.store.set_state(EngineState.ERROR, message.reason)
            self.notify(f"{message.reason}\n{message.fix}", title="Engine", severity="error", timeout=8)
        self.redraw()

    @on(EngineClosed)
    def _engine_closed(self) -> None:
        self.link = None
        self._set_connected("")
        if self._quitting:
            self._write_stats()
            self.exit(0)
            return
        if self.store.state != EngineState.ERROR:
            self.store.set_state(EngineState.DISCONNECTED, "engine closed")
        if self._pending_connect is not None:
            port, self._pending_connect = self._pending_connect, None
            self._engine_worker = None
            self.connect(port)
        self.redraw()

    # ------------------------------------------------------------------------------------------- ports

    @work(thread=True, exclusive=True, group="ports", name="ports")
    def scan_ports(self) -> None:
        try:
            ports = self.port_lister()
            self.post_message(PortsListed(ports))
        except Exception as exc:
            self.post_message(PortsListed([], f"Port scan failed: {exc}"))

    @on(PortsListed)
    def _ports_listed(self, message: PortsListed) -> None:
        with contextlib.suppress(NoMatches):
            self.operator.set_ports(message.ports, message.error, preferred=self.settings.arm.port)
        if message.error:
            self.log_ui("warning", message.error)

    @on(PortPane.RefreshRequested)
    def _refresh_ports(self) -> None:
        self.scan_ports()

    @on(PortPane.ConnectRequested)
    def _connect_requested(self, message: PortPane.ConnectRequested) -> None:
        if self.store.arm_moving:
            self.notify("Stop the arm (F6) before switching ports.", severity="warning")
            return
        self.connect(message.device)

    # ----------------------------------------------------------------------------------------- drawing

    def redraw(self, throttled: bool = False) -> None:
        """Draw the store into the panes; cheap when nothing changed. The refresh timer passes
        `throttled=True` so the latency sparklines repaint at a lower rate than the joints."""
        # While the app exits, the timer and late messages can still fire after the panes (or the
        # whole screen stack) are gone.
        if not self.screen_stack:
            return
        with contextlib.suppress(NoMatches):
            self._redraw(throttled)

    def _redraw(self, throttled: bool) -> None:
        store, screen = self.store, self.operator
        screen.add_events(store)
        # Outside the version check: a throttled latency pane catches up once telemetry goes quiet.
        screen.show_latency(store, time.monotonic() if throttled else None)
        if store.version == self._drawn_version:
            return
        self._drawn_version = store.version
        self.redraws += 1
        screen.show(store, self.port)

    def log_ui(self, level: str, message: str, fix: str = "") -> None:
        if not self.screen_stack:  # a late message while the app exits
            return
        with contextlib.suppress(NoMatches):
            self.operator.log_line(self.clock(), level, message, fix)

    def _set_connected(self, port: str) -> None:
        if not self.screen_stack:  # a late message while the app exits
            return
        with contextlib.suppress(NoMatches):
            self.operator.set_connected(port)

    # ---------------------------------------------------------------------------------------- commands

    def send(self, command: Command) -> bool:
        """Send a command to the engine; False (and a note) when there is none."""
        link = self.link
        if link is None:
            self.notify("No engine is running: connect to an arm first.", severity="warning")
            return False
        command = dataclasses.replace(command, sent_at=self.clock())
        kind = command_name(command)
        try:
            link.send(command)
        except Exception as exc:  # the engine is gone: say so, never crash the screen
            self.log_ui("error", f"{kind} not delivered: {exc}", "press Connect to restart the engine")
            self.notify(str(exc), title=f"{kind} not delivered", severity="error")
            return False
        return True

    def _send_heartbeat(self) -> None:
        if self._tty_fd is not None and terminal_hung_up_on(self._tty_fd):
            self.terminal_hung_up("the terminal is gone (its other end closed)")
            return
        link = self.link
        if link is not None:
            with contextlib.suppress(Exception):  # a gone engine is reported by the worker's poll
                link.send(Heartbeat(sent_at=self.clock()))

    def action_estop(self) -> None:
        if self.send(EStop()):
            # Show it at once; the engine's next batch confirms it.
            self.store.set_state(EngineState.ESTOP, "e-stop sent")
            self.log_ui("warning", "E-STOP sent: the arm holds its pose")
            self.redraw()

    def action_estop_torque_off(self) -> None:
        if self.send(EStop(torque_off=True)):
            self.store.set_state(EngineState.ESTOP, "e-stop, torque OFF")
            self.log_ui("error", "TORQUE OFF sent: the arm is limp and falls under gravity", "support the arm")
            self.notify("Torque is OFF: the arm falls. Support it.", title="E-STOP", severity="error")
            self.redraw()

    def _current_input(self) -> str:
        return self.operator.task_input.value.strip()

    def action_start(self) -> None:
        # While LOADING the engine queues the start (it says so); no need to wait here.
        if self.store.state == EngineState.ESTOP:
            self.notify("E-stop is latched: press r to re-arm first.", severity="warning")
            return
        task = self._current_input() or self.store.task
        if not task:
            self.notify("Type a task in the Task field first.", severity="warning")
            self.operator.task_input.focus()
            return
        self.send(Start(task=task))  # the engine's own event confirms it in the log

    def action_stop(self) -> None:
        self.send(Stop())

    def action_toggle_dry_run(self) -> None:
        flag = not self.store.dry_run
        self.send(SetDryRun(on=flag))

    def action_rearm(self) -> None:
        if self.store.state != EngineState.ESTOP:
            self.notify("Nothing to re-arm: the e-stop is not latched.")
            return

        def chosen(choice: str | None) -> None:
            if choice == "rearm" and self.send(Rearm()):
                self.log_ui("info", "re-arm sent: the policy restarts from a fresh chunk")

        self.push_screen(
            ConfirmScreen(
                "Re-arm the arm?",
                "The policy restarts from a fresh chunk and ramps from the measured pose.\n"
                "Check that the workspace is clear.",
                [("rearm", "y", "Re-arm"), ("cancel", "n", "Cancel")],
            ),
            chosen,
        )

    def action_macro(self, name: str) -> None:
        if name not in self.settings.macros:
            self.notify(f"No macro named {name!r} in lepetpal.toml [macros].", severity="warning")
            return
        if self.send(RunMacro(name=name)):
            self.log_ui("info", f"macro {name} requested")

    def action_toggle_camera(self) -> None:
        self.operator.action_toggle_camera()

    def action_camera_view(self) -> None:
        self.operator.action_camera_view()

    def action_next_camera(self) -> None:
        self.operator.action_next_camera()

    def action_toggle_recording(self) -> None:
        status = self.store.recording
        self.send(SetRecording(on=not (status is not None and status.on)))  # the engine's event confirms it

    def action_mark(self, outcome: str) -> None:
        if outcome in OUTCOMES:
            self.send(MarkEpisode(outcome=outcome))  # type: ignore[arg-type]

    def action_leave_field(self) -> None:
        self.set_focus(None)

    def action_focus_task(self) -> None:
        self.operator.task_input.focus()

    @on(TaskPane.TaskSubmitted)
    def _task_submitted(self, message: TaskPane.TaskSubmitted) -> None:
        state = self.store.state
        if state == EngineState.ESTOP:
            self.notify("E-stop is latched: press r to re-arm, then Enter again.", severity="warning")
        elif state in (EngineState.RUNNING, EngineState.DRY_RUN):
            if self.send(SetTask(task=message.task)):
                self.log_ui("info", f"task changed: {message.task}")
        else:
            # Confirmed by the engine's "Running" event, or "Start queued" while the policy loads.
            self.send(Start(task=message.task))
        # Leave the field so Space is an e-stop again.
        self.set_focus(None)

    # ---------------------------------------------------------------------------------------- UI lost

    def abandon_engine(self, reason: str) -> None:
        """This UI is going away without a quit: tell the engine why, then let go of it. The engine holds
        the arm, logs "UI lost" with `reason` and disconnects per [safety], as after a kill -9."""
        if self._abandoned:
            return
        self._abandoned = True
        link = self.link
        if link is None:
            return
        with contextlib.suppress(Exception):
            abandon = getattr(link, "abandon", None)
            if callable(abandon):
                abandon(reason)
            else:
                link.send(UiLost(sent_at=self.clock(), reason=reason))

    def terminal_hung_up(self, why: str = "SIGHUP: SSH dropped or the terminal closed") -> None:
        """SIGHUP, or a terminal that answers EIO: it is gone (SSH dropped, tmux session killed). Nobody
        can see this screen or press F12 any more: hand over to the engine (it lives in its own session)
        and leave at once; restoring a dead terminal on the way out could block."""
        self.abandon_engine(f"the terminal hung up ({why})")
        self.hard_exit(128 + signal.SIGHUP)

    def _handle_exception(self, error: Exception) -> None:
        # A bug in the UI ends the app: the engine must take the UI-lost path with the reason, not a quit.
        self.abandon_engine(f"the UI crashed ({type(error).__name__}: {error})")
        super()._handle_exception(error)

    # -------------------------------------------------------------------------------------------- quit

    async def action_quit(self) -> None:
        if self._quitting:
            return
        if self.store.arm_moving:

            def chosen(choice: str | None) -> None:
                if choice in ("hold", "home"):
                    self.shutdown(go_home=choice == "home")

            self.push_screen(
                ConfirmScreen(
                    "The arm is moving. Quit?",
                    "Quitting stops the policy first, then disconnects safely.",
                    [("hold", "y", "Stop and quit"), ("home", "g", "Go home, then quit"), ("cancel", "n", "Cancel")],
                ),
                chosen,
            )
            return
        self.shutdown(go_home=self.settings.control.quit_go_home)

    def shutdown(self, go_home: bool) -> None:
        """Stop the arm, close the engine in the worker (never blocks the screen), then exit."""
        self._quitting = True
        self._pending_connect = None
        if self.link is not None and self.store.arm_moving:
            self.send(Stop())
        self.log_ui("info", "shutting down: " + ("going home, then " if go_home else "") + "disconnecting")
        self.redraw()
        if self._engine_worker is None or not self._engine_worker.is_running:
            self._write_stats()
            self.exit(0)
            return
        self._stop_engine(go_home)
        # If the engine does not close in time, leave anyway (the engine holds the arm on its own).
        # The engine client itself gives up after 5 s (plus 30 s for the home motion, plus the recorder's
        # close while an episode is open or saving) and terminates.
        saving = self.store.recording is not None and self.store.recording.save_pending
        if saving:
            self.log_ui("info", "saving the recorded episode before quitting (a few seconds) ...")
        self.set_timer((45.0 if go_home else 12.0) + (RECORDER_CLOSE_S if saving else 0.0), lambda: self.exit(0))
