"""The control engine's public face: wiring, lifecycle (setup, shutdown) and the thread-safe API.

Threads (all in one process; the UI runs the engine in its own process through `engine.process`):
- setup: connects the arm, opens the cameras, loads the policy (streaming ModelStatus).
- actuator (actuator.py): one tick every 1/rate_hz on absolute deadlines; the only regular bus user.
- inference (inference.py): computes the next chunk when the queue runs low and splices it in.
- camera watch (camera_watch.py): a camera that stops holds a running arm between inferences too.
- publisher (publish.py): hands coalesced telemetry to `on_telemetry` at about 20 Hz.

The parts share one `Control` (control.py: lock, epoch, state, `halt`) and reach the bus only through
`GuardedArm` (guarded_arm.py). Commands are applied by `CommandHandler` (commands.py).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np

from lepetpal_tui.engine.actuator import Actuator, raise_thread_priority
from lepetpal_tui.engine.camera_guard import StandInFactory
from lepetpal_tui.engine.camera_watch import CameraWatch, FrameSourceLike
from lepetpal_tui.engine.chunks import ChunkQueue
from lepetpal_tui.engine.commands import CommandHandler
from lepetpal_tui.engine.control import ACTIVE, MOVING, Control
from lepetpal_tui.engine.guarded_arm import ArmLike, GuardedArm
from lepetpal_tui.engine.inference import Inference, PolicyLike
from lepetpal_tui.engine.pacing import Pacer
from lepetpal_tui.engine.plan_ahead import HORIZON_S, macro_actions, preview_goals
from lepetpal_tui.engine.publish import Publisher, RecorderLike, TelemetryCoalescer
from lepetpal_tui.engine.safety import SafetyFilter
from lepetpal_tui.engine.session_log import SessionLog
from lepetpal_tui.engine.watchdog import Watchdog
from lepetpal_tui.joints import FloatArray
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    CameraStatus,
    Command,
    EngineEvent,
    EngineSnapshot,
    EngineState,
    EventKind,
    Heartbeat,
    HoldCause,
    ModelStatus,
    Quit,
    TelemetryBatch,
)

__all__ = ["ArmLike", "Engine", "FrameSourceLike", "PolicyLike", "raise_thread_priority"]

ArmFactory = Callable[[], ArmLike]
PolicyFactory = Callable[[Callable[[ModelStatus], None], threading.Event], PolicyLike]
# A policy factory with this attribute set true loads without holding the engine's GIL for long (in its
# own process, or from a server), so it starts while the arm connects instead of after.
LOADS_WHILE_CONNECTING = "loads_while_connecting"

CameraFactory = Callable[[Callable[[EngineEvent], None]], dict[str, FrameSourceLike]]


class _PendingLoad:
    """A policy load running in its own thread: its result or its error once `done` is set."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.policy: PolicyLike | None = None
        self.error: Exception | None = None


class Engine:
    """Drive the arm from a chunked policy, safely. Plain Python; thread-safe `submit`."""

    def __init__(
        self,
        settings: Settings,
        *,
        arm_factory: ArmFactory,
        policy_factory: PolicyFactory,
        camera_factory: CameraFactory | None = None,
        on_telemetry: Callable[[TelemetryBatch], None] | None = None,
        session_log: SessionLog | None = None,
        telemetry_hz: float = 20.0,
        stand_in_factory: StandInFactory | None = None,
        recorder: RecorderLike | None = None,
    ) -> None:
        self.settings = settings
        self._arm_factory = arm_factory
        self._policy_factory = policy_factory
        self._camera_factory = camera_factory
        self.log = session_log
        self.coalescer = TelemetryCoalescer()
        self.control = c = Control(settings, self.coalescer, session_log)
        self.cameras = CameraWatch(c, stand_in_factory)
        pacer = Pacer(settings.control, 1.0 / settings.control.rate_hz, lambda: self.inference.chunk_len(),
                      c.event)
        self.inference = Inference(c, pacer, self.cameras)
        self.watchdog = Watchdog(c)
        self.actuator = Actuator(c, pacer, self.watchdog)
        self.recorder = recorder
        self.commands = CommandHandler(c, self.cameras, pacer, self.watchdog, on_ui_lost=self.ui_lost,
                                       on_quit=self._quit, recorder=recorder)
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._cancel_load = threading.Event()
        self._ui_lost = False
        self._final_status: ModelStatus | None = None
        self._threads: list[threading.Thread] = []
        self.frame_ring = ""  # the shared-memory frame ring's name, set by engine.frame_publisher
        self._publisher = Publisher(self.coalescer, self.snapshot, on_telemetry, self._finished, 1.0 / telemetry_hz,
                                    recorder=recorder)

    # ------------------------------------------------------------------------------------- public API

    @property
    def state(self) -> EngineState:
        return self.control.state

    @property
    def dry_run(self) -> bool:
        return self.control.dry_run

    @property
    def task(self) -> str:
        return self.control.task

    @property
    def measured(self) -> FloatArray | None:
        """The joints the latest tick read (None before the first read); the scene camera draws them."""
        return self.control.measured

    @property
    def policy(self) -> PolicyLike | None:
        return self.inference.policy

    @property
    def policy_ready(self) -> bool:
        return self.control.policy_ready

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def arm(self) -> ArmLike | None:
        """The connected arm (behind the bus lock inside the engine); None until connected."""
        guarded = self.control.arm
        return None if guarded is None else guarded.arm

    @property
    def filter(self) -> SafetyFilter:
        return self.actuator.filter

    @property
    def queue(self) -> ChunkQueue:
        return self.control.queue

    @property
    def tick_count(self) -> int:
        return self.control.counters.ticks

    @property
    def starved_ticks(self) -> int:
        return self.control.counters.starved

    @property
    def chunk_count(self) -> int:
        return self.control.counters.chunks

    @property
    def clamp_count(self) -> int:
        return self.control.counters.clamps

    @property
    def write_count(self) -> int:
        arm = self.control.arm
        return 0 if arm is None else arm.write_count

    def start(self) -> None:
        """Connect, load and begin ticking, in background threads; returns at once."""
        self._spawn("engine-setup", self._setup)
        self._spawn("engine-telemetry", self._publisher.run)

    def submit(self, cmd: Command) -> None:
        """Apply a command. Halting commands act before returning; the rest are applied at once too,
        except `Quit`, which runs its sequence (hold, optional home, disconnect) in a background thread."""
        now = time.monotonic()
        heartbeat = isinstance(cmd, Heartbeat)
        self.watchdog.beat(now, first=heartbeat)  # any command is a sign the UI is alive
        if heartbeat:
            return  # a few a second: not worth a log line each
        if self.log is not None:
            self.log.command(cmd, now)
        self.commands.apply(cmd)

    def command_failed(self, cmd: Command, exc: BaseException) -> None:
        """A command raised (a bug): hold unless e-stopped, and say which command, so nothing moves on a
        state half changed."""
        c = self.control
        if c.state not in (EngineState.ESTOP, EngineState.DISCONNECTED):
            c.halt(EngineState.ERROR, f"internal error applying {type(cmd).__name__}: {exc}", HoldCause.FAULT)
        c.event("error", f"Command {type(cmd).__name__} failed: {exc!r}. Holding.",
                "Please report this with the session log; re-arm to go on.", EventKind.INTERNAL)

    def wait_for(self, states: tuple[EngineState, ...], timeout: float) -> bool:
        """Block until the state is one of `states`; False on timeout."""
        deadline = time.monotonic() + timeout
        c = self.control
        with c.changed:
            while c.state not in states:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                c.changed.wait(left)
            return True

    def wait_policy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.control.policy_ready:
                return True
            if self._finished.is_set():
                return False
            time.sleep(0.02)
        return False

    def join(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    def flush_telemetry(self, timeout: float = 1.0) -> None:
        """After `join`: wait until the last batch (state DISCONNECTED) has been handed to on_telemetry."""
        for t in self._threads:
            if t.name == "engine-telemetry":
                t.join(timeout)

    def publish_after_close(self) -> None:
        """After `join`, `flush_telemetry` and the recorder's close: its last status and events, once."""
        self._publisher.publish_after_close()

    def close(self, go_home: bool = False, timeout: float = 10.0) -> None:
        """Quit and wait: hold, optionally home, disconnect."""
        if not self._finished.is_set():
            self.submit(Quit(go_home=go_home, sent_at=time.monotonic()))
            self._finished.wait(timeout)

    def ui_lost(self, cause: str = "the controlling process disappeared") -> None:
        """The controlling process disappeared: hold now, disconnect after safety.ui_lost_disconnect_s.

        Every way the UI can go away ends here once (its goodbye, then the pipe's EOF, count once)."""
        c = self.control
        with c.lock:
            if self._ui_lost:
                return
            self._ui_lost = True
        delay = self.settings.safety.ui_lost_disconnect_s
        keep_estop = c.state == EngineState.ESTOP
        c.halt(EngineState.ESTOP if keep_estop else EngineState.ERROR,
               f"UI lost ({cause}); holding, disconnecting in {delay:g} s",
               c.hold_cause if keep_estop else HoldCause.UI_LOST)
        c.event("error", f"UI lost: {cause}. Holding the arm; disconnecting in {delay:g} s.",
                "Restart lepetpal to take control again.", EventKind.UI_LOST)

        def later() -> None:
            if not self._stopping.wait(delay):
                self._shutdown(go_home=False, torque_off=self.settings.safety.ui_lost_torque_off)

        self._spawn("engine-ui-lost", later)

    def snapshot(self) -> EngineSnapshot:
        """State and counters, plus what the screen shows beside them: the plan ahead, the frame ring's
        name and each camera's status. Called by the publisher (about 20 Hz), never by the tick."""
        return dataclasses.replace(
            self.control.snapshot(),
            plan_ahead=self.plan_ahead(),
            frame_ring=self.frame_ring,
            cameras=tuple(self._camera_status(n, cam) for n, cam in self.cameras.cameras.items()),
            recording=None if self.recorder is None else self.recorder.status(),
        )

    def _camera_status(self, name: str, cam: FrameSourceLike) -> CameraStatus:
        cs = self.settings.cameras.get(name)
        return CameraStatus(name, str(getattr(cam, "kind", "camera")), cam.failed_reason,
                            cs.width if cs else 0, cs.height if cs else 0)

    def plan_ahead(self) -> tuple[tuple[float, ...], ...]:
        """The goals the next ~1.5 s of ticks will send, after the safety filter (would-be goals in
        dry-run); () while holding. Replays copies: called by the publisher, never by the tick."""
        c = self.control
        with c.lock:
            state, prev, macro = c.state, c.prev_goal, c.macro
        if state in ACTIVE:
            n = round(HORIZON_S * self.settings.control.rate_hz) + 1
            actions = c.queue.peek(n, self.actuator.speed)
        elif state == EngineState.MACRO and macro is not None:
            actions = macro_actions(macro.goals, macro.index)
        else:
            return ()
        return preview_goals(actions, self.actuator.filter, prev, self.settings.control.rate_hz)

    # ------------------------------------------------------------------------------------------ setup

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _model_status(self, status: ModelStatus) -> None:
        if self.log is not None:
            self.log.model(status)
        if status.usable and not self.control.policy_ready:
            # Published once the policy is installed, so "ready" always means a start is accepted.
            self._final_status = status
            return
        self.coalescer.set_model(status)

    def _setup(self) -> None:
        c = self.control
        if c.estopped:  # an e-stop before the engine started stays latched
            c.set_state(EngineState.ESTOP, "", c.hold_cause)
        else:
            c.set_state(EngineState.CONNECTING)
        # Python, torch and LeRobot imports plus the weights take seconds; connecting the arm needs none of
        # them, so a factory that loads out of this process starts now (the result waits for the arm).
        early = self._start_load() if getattr(self._policy_factory, LOADS_WHILE_CONNECTING, False) else None
        try:
            arm = self._arm_factory()
            arm.connect()
        except Exception as exc:
            self._cancel_load.set()  # no arm, no policy: the loading process is stopped
            c.queued_task = ""
            c.set_state(EngineState.ERROR, f"arm connection failed: {exc}", HoldCause.FAULT)
            generic = "Check arm.port (`lepetpal ports`), the USB cable and the 12 V supply, or use --sim."
            c.event("error", f"Cannot connect to the arm: {exc}",
                    "" if getattr(exc, "says_what_to_do", False) else generic, EventKind.ARM_CONNECT_FAILED)
            self._stopping.set()
            if self.log is not None:
                self.log.close(ticks=0, error=f"arm connection failed: {exc}")
            self._finished.set()
            return
        c.arm = GuardedArm(arm)
        glitches = list(getattr(arm, "connect_glitches", ()))
        if glitches:
            c.event("warning", f"The arm connected on try {len(glitches) + 1}; before that: {glitches[0]}.",
                    "A lost reply at connect is harmless once; if it repeats, check the USB cable and that "
                    "nothing else loads this computer.", EventKind.BUS_FAULT)
        if self._stopping.is_set():
            return
        first = c.arm.call(lambda a: np.asarray(a.read_joints(), dtype=np.float64))
        if first.ok and first.value is not None:
            with c.lock:
                c.measured = first.value
                c.prev_goal = first.value.copy()
        else:
            c.event("warning", f"First joint read failed: {first.error}", kind=EventKind.BUS_FAULT)
        with c.lock:
            # An e-stop that arrived while connecting stays latched.
            if c.estopped:
                c.set_state(EngineState.ESTOP, c.hold_reason, c.hold_cause)
            elif c.queued_task:
                c.set_state(EngineState.LOADING, f'start of "{c.queued_task}" queued', HoldCause.QUEUED_START)
            else:
                c.set_state(EngineState.LOADING)
        c.event("info", "Arm connected; holding.", kind=EventKind.STATE)
        self._spawn("engine-actuator", lambda: self.actuator.run(self._stopping))
        self._open_cameras()
        self._load_policy(early or self._start_load())

    def _open_cameras(self) -> None:
        if self._camera_factory is None:
            return
        c = self.control
        try:
            cameras = self._camera_factory(c.add_event)
        except Exception as exc:
            c.event("error", f"Cannot open the cameras: {exc}", "Check [cameras] in lepetpal.toml.",
                    EventKind.CAMERA_FAULT)
            cameras = {}
        self.cameras.open(cameras)
        if cameras:
            self._spawn("engine-camera-watch", lambda: self.cameras.run(self._stopping))

    def _start_load(self) -> _PendingLoad:
        pending = _PendingLoad()

        def load() -> None:
            try:
                pending.policy = self._policy_factory(self._model_status, self._cancel_load)
            except Exception as exc:
                pending.error = exc
            finally:
                pending.done.set()

        self._spawn("engine-policy-load", load)
        return pending

    def _load_policy(self, pending: _PendingLoad) -> None:
        c = self.control
        pending.done.wait()
        policy, exc = pending.policy, pending.error
        if exc is not None or policy is None:
            exc = exc or RuntimeError("the policy factory returned nothing")
            if not self._stopping.is_set():
                with c.lock:
                    c.load_failed = True
                    dropped, c.queued_task = c.queued_task, ""
                    if c.state == EngineState.LOADING:
                        c.set_state(EngineState.ERROR, "the policy failed to load: see the Model pane",
                                    HoldCause.LOAD_FAILED)
                c.event("error", f"The policy failed to load: {exc}", "See the Model pane for what to fix.",
                        EventKind.POLICY_LOAD_FAILED)
                if dropped:
                    c.event("warning", f'Queued start of "{dropped}" dropped: there is no policy.',
                            kind=EventKind.STATE)
            return
        if self._stopping.is_set():
            return
        with c.lock:
            self.inference.policy = policy
            c.policy_ready = True
            if c.state == EngineState.LOADING:
                c.set_state(EngineState.READY)
        c.event("info", f"Policy ready (chunk of {policy.chunk_length} actions).", kind=EventKind.POLICY_READY)
        self.coalescer.set_model(self._final_status or ModelStatus("ready", message="policy ready"))
        self._spawn("engine-inference", lambda: self.inference.run(self._stopping))
        with c.lock:  # held through the start: a stop or e-stop cannot slip in between
            queued, c.queued_task = c.queued_task, ""
            if queued:
                self.commands.start(queued)

    # -------------------------------------------------------------------------------------- shutdown

    def _quit(self, go_home: bool) -> None:
        go_home = go_home or self.settings.control.quit_go_home
        torque_off = self.settings.control.quit_torque_off
        self._spawn("engine-quit", lambda: self._shutdown(go_home=go_home, torque_off=torque_off))

    def _shutdown(self, go_home: bool, torque_off: bool) -> None:
        if self._stopping.is_set():
            return
        c = self.control
        self._cancel_load.set()
        if c.state in MOVING:
            c.halt(c.idle(), "quitting", HoldCause.STOPPED)
        if go_home and c.arm is not None and not c.estopped and c.state in (EngineState.READY, EngineState.LOADING):
            self.commands.macro("home")
            if self.state == EngineState.MACRO:  # the property: another thread changes it
                self.wait_for((EngineState.READY, EngineState.ERROR, EngineState.ESTOP), timeout=30.0)
        self._stopping.set()
        for t in self._threads:
            if t.name in ("engine-actuator", "engine-inference") and t is not threading.current_thread():
                t.join(timeout=5.0)
        if c.arm is not None:
            result = c.arm.call(lambda a: a.disconnect(torque_off=torque_off))
            if not result.ok:
                c.event("warning", f"Disconnect: {result.error}", kind=EventKind.BUS_FAULT)
        closer = getattr(self.inference.policy, "close", None)  # a policy in its own process
        if callable(closer):
            try:
                closer()
            except Exception as exc:  # the policy process may already be gone
                c.event("info", f"Policy close: {exc}")
        self.cameras.close()
        c.set_state(EngineState.DISCONNECTED, "disconnected")
        c.event("info", "Disconnected" + (" (torque off)." if torque_off else " (torque left on)."),
                kind=EventKind.DISCONNECTED)
        if self.log is not None:
            n = c.counters
            self.log.close(ticks=n.ticks, starved=n.starved, clamps=n.clamps, estops=n.estops, overruns=n.overruns)
        self._finished.set()
