"""The control engine: a fixed-rate actuator thread, an inference thread and the command handling.

Threads (all in one process; the UI runs the engine in its own process through engine_process.py):
- setup: connects the arm, opens the cameras, loads the policy (streaming ModelStatus).
- actuator: one tick every 1/rate_hz on absolute deadlines. Read joints, take the action for this tick
  from the chunk queue, safety filter, write the goal (not in dry-run). It is the only thread that uses the
  bus, except the e-stop / halt path, which takes the bus lock itself so it does not wait for a tick.
- inference: when the queue runs low, computes the next chunk from the latest joints and frames, and
  splices it into the queue.
- publisher: hands coalesced telemetry to `on_telemetry` at about 20 Hz.

Every transition that stops the arm ("halt": stop, e-stop, fault, UI lost) bumps `epoch`. The actuator
decides a goal under one epoch and writes it only if the epoch is unchanged *inside the bus lock*, so once
a halt returns no policy or macro goal can reach the bus. Chunks computed under an old epoch are dropped.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from lepetpal_tui.config import Settings
from lepetpal_tui.core.camera_guard import CameraGuard, CameraReading
from lepetpal_tui.core.chunks import ChunkQueue, playback_speed, sustainable_speed
from lepetpal_tui.core.macros import macro_refusal, plan_macro
from lepetpal_tui.core.safety import HEALTH_FIX, SafetyFilter, health_problem
from lepetpal_tui.core.telemetry import SessionLog, TelemetryCoalescer
from lepetpal_tui.core.types import (
    ActionChunk,
    CapturedFrame,
    ChunkSample,
    Command,
    EngineEvent,
    EngineState,
    ModelStatus,
    Observation,
    RecordingStatus,
    ServoHealth,
    TelemetryBatch,
    TickSample,
)

FloatArray = npt.NDArray[np.float64]
Level = Literal["info", "warning", "error"]


class ArmLike(Protocol):
    """What the engine needs from `core.arm.Arm` (tests pass a fake)."""

    def connect(self) -> None: ...
    def read_joints(self) -> FloatArray: ...
    def write_goals(self, goals: FloatArray) -> None: ...
    def read_health(self) -> tuple[ServoHealth, ...]: ...
    def hold(self) -> FloatArray: ...
    def set_torque(self, on: bool) -> None: ...
    def disconnect(self, torque_off: bool = True) -> None: ...


class PolicyLike(Protocol):
    """What the engine needs from `core.policy.ChunkPolicy`."""

    chunk_length: int

    def infer(self, obs: Observation) -> ActionChunk: ...
    def reset(self) -> None: ...


class FrameSourceLike(Protocol):
    """What the engine needs from a camera (`core.camera.FrameSource`)."""

    @property
    def failed_reason(self) -> str: ...
    def latest(self) -> CapturedFrame | None: ...
    def close(self) -> None: ...


class RecorderLike(Protocol):
    """What the engine needs from `record.feed.RecordFeed`. Fed from the telemetry publisher thread, never
    from the actuator tick; `feed` must not block."""

    def feed(self, batch: TelemetryBatch) -> None: ...
    def command(self, cmd: Command) -> tuple[Level, str]: ...
    def status(self) -> RecordingStatus: ...


ArmFactory = Callable[[], ArmLike]
PolicyFactory = Callable[[Callable[[ModelStatus], None], threading.Event], PolicyLike]
CameraFactory = Callable[[Callable[[EngineEvent], None]], dict[str, FrameSourceLike]]

_ACTIVE = (EngineState.RUNNING, EngineState.DRY_RUN)
_CONFIRM_WINDOW_S = 10.0  # a second start within this long confirms running on a synthetic fallback
_MARGIN_TICKS = 2
_LATENCY_HEADROOM = 1.15  # slowed playback plans for chunks this much slower than the recent ones
_ACTUATOR_NICE = -10
_MAX_LAG_S = 0.15  # a new plan may run this much late rather than starve (see ChunkQueue.merge)


def raise_thread_priority() -> bool:
    """Ask the kernel to favour the calling thread (nice -10) when the CPU is contended.

    Only a CFS weight, not SCHED_FIFO: LeRobot's bus client spins while it waits for a reply, and a
    real-time spinner could starve the USB stack (or the simulator) it is waiting for. Needs root or
    CAP_SYS_NICE (or a nice limit in /etc/security/limits.conf); without it, nothing changes.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _ACTUATOR_NICE)
    except (OSError, AttributeError):
        return False
    return True


@dataclass
class _Macro:
    name: str
    goals: FloatArray
    index: int = 0


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
        recorder: RecorderLike | None = None,
    ) -> None:
        self.settings = settings
        self._arm_factory = arm_factory
        self._policy_factory = policy_factory
        self._camera_factory = camera_factory
        self._on_telemetry = on_telemetry
        self.log = session_log
        self.recorder = recorder
        self._run = 0  # policy starts so far: the episode a recorded tick belongs to
        self._telemetry_period = 1.0 / telemetry_hz
        self.period = 1.0 / settings.control.rate_hz
        self.filter = SafetyFilter(settings.arm)
        self.queue = ChunkQueue()
        self.coalescer = TelemetryCoalescer()

        self._lock = threading.RLock()  # engine state
        self._bus_lock = threading.Lock()  # the serial bus (actuator + halt path)
        self._state_changed = threading.Condition(self._lock)
        self._state = EngineState.DISCONNECTED
        self._epoch = 0
        self._estopped = False
        self._dry_run = settings.control.dry_run
        self._task = ""
        self._hold_reason = ""
        self._prev_goal: FloatArray | None = None
        self._measured: FloatArray | None = None
        self._measured_tick = -1
        self._awaiting_first_chunk = False
        self._reset_policy = False
        self._macro: _Macro | None = None
        # Counted apart: a bus that reads fine but cannot write (or cannot read health) must hold too.
        self._read_failures = 0
        self._write_failures = 0
        self._health_failures = 0
        self._heartbeat_at: float | None = None  # the UI's last sign of life; None until its first heartbeat
        self._late_s = 0.0
        self._latency_ticks: deque[int] = deque(maxlen=3)
        self._infer_obs_tick: int | None = None  # the observation tick of the inference in progress
        self._speed = 1.0  # playback speed factor of the latest tick
        self._speed_floor_warned = False
        self._max_lag_ticks = max(2, round(_MAX_LAG_S * settings.control.rate_hz))
        self._ui_lost = False
        self._queued_task = ""  # a start that waits for the policy (LOADING); any halt drops it
        self._load_failed = False
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._cancel_load = threading.Event()
        self._infer_wake = threading.Event()

        self.arm: ArmLike | None = None
        self.policy: PolicyLike | None = None
        self._final_status: ModelStatus | None = None
        self.cameras: dict[str, FrameSourceLike] = {}
        self._camera_guard = CameraGuard({}, settings, time.monotonic())
        self._stand_in_announced: set[str] = set()
        self._confirmed_stand_ins: set[str] = set()  # cameras the operator chose to run on without
        self._confirm_until = 0.0

        self.tick_count = 0
        self.starved_ticks = 0
        self.clamp_count = 0
        self.estop_count = 0
        self.overruns = 0
        self.write_count = 0
        self.last_write_t = 0.0
        self.chunk_count = 0
        self._threads: list[threading.Thread] = []
        self._commands: queue_mod.SimpleQueue[Command] = queue_mod.SimpleQueue()

    # ------------------------------------------------------------------------------------- public API

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def dry_run(self) -> bool:
        return self._dry_run

    @property
    def task(self) -> str:
        return self._task

    @property
    def policy_ready(self) -> bool:
        return self.policy is not None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def start(self) -> None:
        """Connect, load and begin ticking, in background threads; returns at once."""
        self._spawn("engine-setup", self._setup)
        self._spawn("engine-telemetry", self._publish_loop)

    def submit(self, cmd: Command) -> None:
        """Apply a command. Halting commands act before returning; the rest are applied at once too,
        except `quit`, which runs its sequence (hold, optional home, disconnect) in a background thread."""
        now = time.monotonic()
        if self._heartbeat_at is not None:
            self._heartbeat_at = now  # any command is a sign the UI is alive
        if cmd.kind == "heartbeat":
            self._heartbeat_at = now
            return  # a few a second: not worth a log line each
        if self.log is not None:
            self.log.command(cmd, now)
        handler = getattr(self, f"_cmd_{cmd.kind}", None)
        if handler is None:
            self._event("warning", f'Unknown command "{cmd.kind}" ignored.')
            return
        handler(cmd)

    def wait_for(self, states: tuple[EngineState, ...], timeout: float) -> bool:
        """Block until the state is one of `states`; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._state_changed:
            while self._state not in states:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state_changed.wait(left)
            return True

    def wait_policy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.policy is not None:
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

    def close(self, go_home: bool = False, timeout: float = 10.0) -> None:
        """Quit and wait: hold, optionally home, disconnect."""
        if not self._finished.is_set():
            self.submit(Command("quit", go_home=go_home, sent_at=time.monotonic()))
            self._finished.wait(timeout)

    def ui_lost(self, cause: str = "the controlling process disappeared") -> None:
        """The controlling process disappeared: hold now, disconnect after safety.ui_lost_disconnect_s.

        Every way the UI can go away ends here once (its goodbye, then the pipe's EOF, count once)."""
        with self._lock:
            if self._ui_lost:
                return
            self._ui_lost = True
        delay = self.settings.safety.ui_lost_disconnect_s
        self._halt(
            EngineState.ERROR if self._state != EngineState.ESTOP else EngineState.ESTOP,
            f"UI lost ({cause}); holding, disconnecting in {delay:g} s",
        )
        self._event(
            "error",
            f"UI lost: {cause}. Holding the arm; disconnecting in {delay:g} s.",
            "Restart lepetpal to take control again.",
        )

        def later() -> None:
            if not self._stopping.wait(delay):
                self._shutdown(go_home=False, torque_off=self.settings.safety.ui_lost_torque_off)

        self._spawn("engine-ui-lost", later)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "task": self._task,
            "dry_run": self._dry_run,
            "starved_ticks": self.starved_ticks,
            "clamp_count": self.clamp_count,
            "estop_count": self.estop_count,
            "tick_count": self.tick_count,
            "hold_reason": self._hold_reason,
            "recording": None if self.recorder is None else self.recorder.status(),
        }

    # ---------------------------------------------------------------------------------------- helpers

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _event(self, level: Level, message: str, fix: str = "") -> None:
        e = EngineEvent(time.monotonic(), level, message, fix)
        self.coalescer.add_event(e)
        if self.log is not None:
            self.log.event(e)

    def _event_obj(self, e: EngineEvent) -> None:
        self.coalescer.add_event(e)
        if self.log is not None:
            self.log.event(e)

    def _set_state(self, state: EngineState, reason: str = "") -> None:
        with self._state_changed:
            self._state = state
            self._hold_reason = reason
            self._state_changed.notify_all()

    def _idle(self) -> EngineState:
        """Where the arm holds when nothing runs: READY only once a start would be accepted."""
        if self.policy is not None:
            return EngineState.READY
        return EngineState.ERROR if self._load_failed else EngineState.LOADING

    def _model_status(self, status: ModelStatus) -> None:
        if self.log is not None:
            self.log.model(status)
        if status.phase in ("ready", "fallback") and self.policy is None:
            # Published once the policy is installed, so "ready" always means `start` is accepted.
            self._final_status = status
            return
        self.coalescer.set_model(status)

    def _halt(self, state: EngineState, reason: str, torque_off: bool = False, hold: bool = True) -> None:
        """Stop policy/macro output now; then hold the measured pose, or cut torque, or (hold=False) just
        write nothing more, so the servos stay at the last goal they were given."""
        with self._lock:
            self._epoch += 1
            self._macro = None
            dropped, self._queued_task = self._queued_task, ""
            self.queue.clear()
            self._confirmed_stand_ins = set()  # a confirmation covers one start only
            if self._state not in (EngineState.DISCONNECTED,):
                self._set_state(state, reason)
        if dropped:
            self._event("info", f'Queued start of "{dropped}" cancelled ({reason}).')
        # From here no goal decided before can pass the actuator's epoch check (made inside the bus lock),
        # so at most a write already in flight (about a millisecond) still reaches the bus.
        arm = self.arm
        if arm is None or not (hold or torque_off):
            return
        with self._bus_lock:
            try:
                if torque_off:
                    arm.set_torque(False)
                    pose = None
                else:
                    pose = arm.hold()
                self.last_write_t = time.monotonic()
            except Exception as exc:  # a bus fault must not keep the halt from completing
                pose = None
                self._event("error", f"Hold failed on the bus: {exc}", "Check the arm's power and USB cable.")
        with self._lock:
            if pose is not None:
                self._prev_goal = np.asarray(pose, dtype=np.float64)

    # --------------------------------------------------------------------------------------- commands

    def _cmd_estop(self, cmd: Command) -> None:
        with self._lock:
            self._estopped = True
            self.estop_count += 1
        # No bus transaction in the e-stop path: it must not wait behind a slow or failing bus, and
        # nothing is written after it. The servos hold the last goal, at most max_step_per_tick beyond
        # the previous one, with torque on.
        self._halt(EngineState.ESTOP, "e-stop (latched): re-arm to continue", hold=False)
        with self._lock:
            gap = (
                float(np.max(np.abs(self._prev_goal - self._measured)))
                if self._prev_goal is not None and self._measured is not None
                else 0.0
            )
        self._event("warning", f"E-STOP: holding at the last goal ({gap:.1f} from the last measured pose), "
                    "torque on.", "Re-arm to continue.")

    def _cmd_estop_torque_off(self, cmd: Command) -> None:
        with self._lock:
            self._estopped = True
            self.estop_count += 1
        self._halt(EngineState.ESTOP, "e-stop with torque OFF: the arm is limp", torque_off=True)
        self._event(
            "warning",
            "E-STOP, TORQUE OFF: the arm is limp and falls under its own weight.",
            "Support the arm, then re-arm (torque comes back on at the measured pose).",
        )

    def _cmd_stop(self, cmd: Command) -> None:
        if self._state in (EngineState.ESTOP, EngineState.DISCONNECTED):
            return
        queued = self._queued_task
        self._halt(self._idle() if self._state != EngineState.ERROR else EngineState.ERROR, "stopped")
        if not queued:  # else _halt said the queued start was cancelled
            self._event("info", "Stopped: holding the measured pose.")

    def _cmd_rearm(self, cmd: Command) -> None:
        arm = self.arm
        with self._lock:
            if self._state not in (EngineState.ESTOP, EngineState.ERROR):
                self._event("info", "Re-arm ignored: not e-stopped or faulted.")
                return
            was_torque_off = self._hold_reason.startswith("e-stop with torque OFF")
        if arm is not None:
            with self._bus_lock:
                try:
                    pose = arm.read_joints()
                    if was_torque_off:
                        # The goal register still holds the pre-fall goal: point it at the measured pose
                        # before torque comes back, or the arm would jump.
                        arm.write_goals(pose)
                        arm.set_torque(True)
                    pose = arm.hold()
                except Exception as exc:
                    self._event("error", f"Re-arm failed on the bus: {exc}", "Check power and cable, retry.")
                    return
        with self._lock:
            self._estopped = False
            self._read_failures = self._write_failures = self._health_failures = 0
            self._epoch += 1
            self._prev_goal = None if arm is None else np.asarray(pose, dtype=np.float64)
            idle = self._idle() if arm is not None else EngineState.DISCONNECTED
            self._set_state(idle, "the policy failed to load: see the Model pane" if idle == EngineState.ERROR else "")
        self._event("info", "Re-armed. The policy restarts from a fresh chunk when started.")
        if cmd.flag and self._task:
            self._cmd_start(Command("start", task=self._task))

    def _cmd_start(self, cmd: Command) -> None:
        with self._lock:
            task = cmd.task.strip() or self._task
            why = ""
            if self._state == EngineState.ESTOP:
                why = "the arm is e-stopped. Re-arm first."
            elif self._state == EngineState.ERROR:
                why = f"the engine is holding after a fault ({self._hold_reason}). Fix it, then re-arm."
            elif self._state == EngineState.DISCONNECTED:
                why = "the arm is not connected yet."
            elif not task:
                why = "no task given. Type what the arm should do."
            elif self.policy is None and self._state in (EngineState.CONNECTING, EngineState.LOADING):
                # Queued, not refused: the typed task starts as soon as the policy is installed (see
                # _setup); F6, an e-stop or any fault before then drops it.
                self._queued_task = task
                self._set_state(self._state, f'start of "{task}" queued')
                self._event("info", f'Start queued: "{task}" starts when the policy is ready (F6 or F12 cancels).')
                return
            elif self.policy is None:
                why = "the policy failed to load (see the Model pane)."
            elif self._measured is None:
                why = "the joints have not been read yet."
            confirmed: set[str] = set()
            if not why:
                why, confirmed = self._camera_start_check(cmd.flag)
            if why:
                self._event("warning", f"Start refused: {why}")
                return
            self._epoch += 1
            self._run += 1
            self._confirmed_stand_ins = confirmed
            self._task = task
            self._macro = None
            self.queue.reset(self._measured_tick + 1)
            self._prev_goal = None if self._measured is None else self._measured.copy()  # ramp from here
            self._awaiting_first_chunk = True
            self._reset_policy = True
            self._speed_floor_warned = False
            self._set_state(EngineState.DRY_RUN if self._dry_run else EngineState.RUNNING)
        self._infer_wake.set()
        self._event("info", f'Running "{task}"' + (" in dry-run (no goal writes)." if self._dry_run else "."))

    def _camera_start_check(self, confirmed_by_flag: bool) -> tuple[str, set[str]]:
        """("why start is refused" or "", the cameras the operator confirmed running without)."""
        reading = self._camera_guard.read(time.monotonic(), faults_only=True)
        faults = reading.faults
        if not faults or self._dry_run or self.settings.is_sim:
            return "", set()  # a fault later is handled by the camera watch (stand-in or hold)
        what = "; ".join(f"{name}: {why}" for name, why in faults.items())
        if not self.settings.safety.camera_fallback_synthetic:
            return f"camera fault ({what}). Reconnect the camera, or use dry-run.", set()
        now = time.monotonic()
        if confirmed_by_flag or now < self._confirm_until:
            self._confirm_until = 0.0
            self._event("warning", f"Running on the synthetic scene for camera {', '.join(faults)} (confirmed): "
                        "the policy does not see the room.", "Stop (F6) or e-stop (F12) if the arm misbehaves.")
            return "", set(faults)
        self._confirm_until = now + _CONFIRM_WINDOW_S
        return (f"camera fault ({what}). The policy would see only a synthetic scene and act blind. "
                f"Press start again within {_CONFIRM_WINDOW_S:g} s to run on it anyway, or use dry-run."), set()

    def _cmd_set_task(self, cmd: Command) -> None:
        task = cmd.task.strip()
        if not task:
            self._event("warning", "Empty task ignored.")
            return
        with self._lock:
            self._task = task
        self._event("info", f'Task set to "{task}" (used from the next chunk).')

    def _cmd_set_dry_run(self, cmd: Command) -> None:
        with self._lock:
            self._dry_run = cmd.flag
            if cmd.flag and self._state == EngineState.RUNNING:
                self._set_state(EngineState.DRY_RUN)
                going = "dry"
            elif not cmd.flag and self._state == EngineState.DRY_RUN:
                # Going live: the would-be goals were never sent, so ramp from where the arm really is.
                self._prev_goal = None if self._measured is None else self._measured.copy()
                self._set_state(EngineState.RUNNING)
                going = "live"
            else:
                going = ""
        if going == "dry":
            # Bump the epoch so a goal decided as RUNNING this tick is not written, then hold.
            with self._lock:
                self._epoch += 1
            self._hold_only()
        self._event("info", "Dry-run on: no goals are written." if cmd.flag else "Dry-run off: goals are written.")

    def _hold_only(self) -> None:
        arm = self.arm
        if arm is None:
            return
        with self._bus_lock:
            try:
                pose = arm.hold()
            except Exception as exc:
                self._event("error", f"Hold failed on the bus: {exc}")
                return
        with self._lock:
            self._prev_goal = np.asarray(pose, dtype=np.float64)

    def _cmd_macro(self, cmd: Command) -> None:
        with self._lock:
            why = macro_refusal(cmd.name, self.settings.macros, self._measured, self._estopped)
            if not why and self._state in (EngineState.ERROR, EngineState.DISCONNECTED, EngineState.CONNECTING):
                why = f'Macro "{cmd.name}" refused: the engine is {self._state.value}.'
            if not why and self._dry_run:
                why = f'Macro "{cmd.name}" refused in dry-run: it would move the arm. Leave dry-run first.'
            if why:
                self._event("warning", why)
                return
            assert self._measured is not None
            start = self._measured.copy()
        # Stop the policy first (its chunk must not mix into the macro), then plan from the measured pose.
        if self._state in _ACTIVE:
            self._halt(EngineState.READY, "starting macro")
        with self._lock:
            self._queued_task = ""  # the operator chose the macro instead
            self._epoch += 1
            self._macro = _Macro(cmd.name, plan_macro(self.settings.macros[cmd.name], start, 1.0 / self.period))
            self._prev_goal = start
            self._set_state(EngineState.MACRO, f"macro {cmd.name}")
        self._event("info", f'Macro "{cmd.name}" started.')

    def _cmd_record(self, cmd: Command) -> None:
        """Recording on/off (flag), or mark the last episode (name = "success" / "failure" / "timed out")."""
        if self.recorder is None:
            self._event("warning", "Recording is not available in this engine.")
            return
        level, text = self.recorder.command(cmd)
        if text:
            self._event(level, text)

    def _cmd_ui_lost(self, cmd: Command) -> None:
        self.ui_lost(cmd.reason or "the UI said it is going away")

    def _cmd_quit(self, cmd: Command) -> None:
        go_home = cmd.go_home or self.settings.control.quit_go_home
        self._spawn(
            "engine-quit",
            lambda: self._shutdown(go_home=go_home, torque_off=self.settings.control.quit_torque_off),
        )

    # ------------------------------------------------------------------------------------------ setup

    def _setup(self) -> None:
        self._set_state(EngineState.CONNECTING if not self._estopped else EngineState.ESTOP)
        try:
            arm = self._arm_factory()
            arm.connect()
        except Exception as exc:
            self._queued_task = ""
            self._set_state(EngineState.ERROR, f"arm connection failed: {exc}")
            self._event(
                "error",
                f"Cannot connect to the arm: {exc}",
                "Check arm.port (`lepetpal ports`), the USB cable and the 12 V supply, or use --sim.",
            )
            self._stopping.set()
            if self.log is not None:
                self.log.close(ticks=0, error=f"arm connection failed: {exc}")
            self._finished.set()
            return
        self.arm = arm
        if self._stopping.is_set():
            return
        try:
            pose = arm.read_joints()
            with self._lock:
                self._measured = np.asarray(pose, dtype=np.float64)
                self._prev_goal = self._measured.copy()
        except Exception as exc:
            self._event("warning", f"First joint read failed: {exc}")
        with self._lock:
            # An e-stop that arrived while connecting stays latched.
            queued = f'start of "{self._queued_task}" queued' if self._queued_task else ""
            self._set_state(EngineState.ESTOP if self._estopped else EngineState.LOADING,
                            self._hold_reason if self._estopped else queued)
        self._event("info", "Arm connected; holding.")
        self._spawn("engine-actuator", self._actuator_loop)
        if self._camera_factory is not None:
            try:
                self.cameras = self._camera_factory(self._event_obj)
            except Exception as exc:
                self._event("error", f"Cannot open the cameras: {exc}", "Check [cameras] in lepetpal.toml.")
            self._camera_guard = CameraGuard(self.cameras, self.settings, time.monotonic())
            if self.cameras:
                self._spawn("engine-camera-watch", self._camera_watch_loop)
        try:
            policy = self._policy_factory(self._model_status, self._cancel_load)
        except Exception as exc:
            if not self._stopping.is_set():
                with self._lock:
                    self._load_failed = True
                    dropped, self._queued_task = self._queued_task, ""
                    if self._state == EngineState.LOADING:
                        self._set_state(EngineState.ERROR, "the policy failed to load: see the Model pane")
                self._event("error", f"The policy failed to load: {exc}", "See the Model pane for what to fix.")
                if dropped:
                    self._event("warning", f'Queued start of "{dropped}" dropped: there is no policy.')
            return
        if self._stopping.is_set():
            return
        with self._lock:
            self.policy = policy
            if self._state == EngineState.LOADING:
                self._set_state(EngineState.READY)
        self._event("info", f"Policy ready (chunk of {policy.chunk_length} actions).")
        self.coalescer.set_model(self._final_status or ModelStatus("ready", message="policy ready"))
        self._spawn("engine-inference", self._inference_loop)
        with self._lock:  # held through the start: a stop or e-stop cannot slip in between
            queued, self._queued_task = self._queued_task, ""
            if queued:
                self._cmd_start(Command("start", task=queued, sent_at=time.monotonic()))

    # --------------------------------------------------------------------------------------- actuator

    def _actuator_loop(self) -> None:
        if not raise_thread_priority():
            self._event("info", "Control thread runs at normal priority (no permission to raise it).",
                        "Allow a negative nice (CAP_SYS_NICE or limits.conf) for steadier ticks on a busy CPU.")
        period = self.period
        t0 = time.monotonic()
        k = 0
        last_start = t0
        health_every = max(1, round(1.0 / period))  # about once a second: it costs bus time
        while not self._stopping.is_set():
            deadline = t0 + k * period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            if now - deadline >= period:  # overran a whole period: skip to the current slot
                k = int((now - t0) / period)
                self.overruns += 1
            try:
                self._late_s = now - (t0 + k * period)  # how late this tick started: the jitter
                self._tick(k, now, now - last_start)
            except Exception as exc:  # a bug must not leave the arm moving: hold and report
                self._halt(EngineState.ERROR, f"internal error: {exc}")
                self._event("error", f"Control loop error: {exc!r}", "Please report this with the session log.")
            if k % health_every == health_every - 1:
                self._check_health()
            self._check_heartbeat(time.monotonic())
            last_start = now
            k += 1

    def _tick(self, k: int, start: float, period_s: float) -> None:
        arm = self.arm
        assert arm is not None
        measured: FloatArray | None = None
        err: BaseException | None = None
        with self._bus_lock:
            try:
                measured = np.asarray(arm.read_joints(), dtype=np.float64)
            except Exception as exc:
                err = exc
        if measured is None:
            self._read_failure(err or RuntimeError("no reading"))
            self._emit_tick(k, start, period_s, None, None, False, (False,) * 6, False)
            return
        self._read_failures = 0
        with self._lock:
            self._measured = measured
            self._measured_tick = k
            state, epoch, prev, dry = self._state, self._epoch, self._prev_goal, self._dry_run
            macro = self._macro
        if prev is None:
            prev = measured
        proposed: FloatArray | None = None
        starved = False
        self._speed = 1.0
        if state in _ACTIVE:
            self._speed = self._playback_speed(k)
            proposed = self.queue.pop(k, self._speed)
            if proposed is None:
                starved = not self._awaiting_first_chunk
            if self._next_chunk_due(self.queue.depth(k + 1)):
                self._infer_wake.set()
        elif state == EngineState.MACRO and macro is not None:
            if macro.index < len(macro.goals):
                proposed = macro.goals[macro.index]
                macro.index += 1
            else:
                with self._lock:
                    if self._epoch == epoch:
                        self._macro = None
                        self._set_state(self._idle())
                self._event("info", f'Macro "{macro.name}" done.')
        goal: FloatArray | None = None
        clamped: tuple[bool, ...] = (False,) * 6
        if proposed is not None:
            result = self.filter.apply(proposed, prev)
            clamped = result.clamped
            if result.goal is None:
                self._halt(EngineState.ERROR, result.reason)
                self._event("error", f"Holding: {result.reason}.", "Check the policy output; re-arm to retry.")
                self._emit_tick(k, start, period_s, measured, None, False, clamped, starved)
                return
            goal = result.goal
            self.clamp_count += result.clamp_count
        written = False
        if goal is not None and not (dry and state != EngineState.MACRO):
            with self._bus_lock:
                if self._epoch == epoch and not self._estopped:
                    try:
                        arm.write_goals(goal)
                        written = True
                        self.write_count += 1
                        self.last_write_t = time.monotonic()
                    except Exception as exc:
                        err = exc
            if written:
                self._write_failures = 0
            elif err is not None:
                self._write_failure(err)
        if goal is not None:
            with self._lock:
                if self._epoch == epoch:
                    self._prev_goal = goal
        if starved:
            self.starved_ticks += 1
        self._emit_tick(k, start, period_s, measured, goal, written, clamped, starved, raw=proposed)

    def _emit_tick(
        self,
        k: int,
        start: float,
        period_s: float,
        measured: FloatArray | None,
        goal: FloatArray | None,
        written: bool,
        clamped: tuple[bool, ...],
        starved: bool,
        raw: FloatArray | None = None,
    ) -> None:
        self.tick_count += 1
        m = tuple(float(v) for v in measured) if measured is not None else (float("nan"),) * 6
        sample = TickSample(
            t=start,
            period_s=period_s,
            work_s=time.monotonic() - start,
            measured=m,
            goal=None if goal is None else tuple(float(v) for v in goal),
            written=written,
            clamped=clamped,
            starved=starved,
            queue_depth=self.queue.depth(k + 1),
            speed=self._speed,
            raw_action=None if raw is None else tuple(float(v) for v in raw),
            run=self._run if self._state in _ACTIVE else -1,
        )
        self.coalescer.add_tick(sample)
        if self.log is not None:
            self.log.tick(sample, self._state, late_s=self._late_s)

    def _next_chunk_due(self, depth: int) -> bool:
        """Whether to compute the next chunk now: the queue is down to `chunk_threshold` of a chunk or,
        when slowing down is allowed, to what the last chunks took to compute (start in time)."""
        control = self.settings.control
        if depth <= control.chunk_threshold * self._chunk_len():
            return True
        latency = self._latency_ticks
        return control.when_inference_is_slow == "slow_down" and bool(latency) and depth <= max(latency) + _MARGIN_TICKS

    def _playback_speed(self, k: int) -> float:
        """Plan steps to play this tick: below 1 when the queued plan would run out before the next chunk
        lands (inference slower than the plan), so the arm keeps moving instead of stopping."""
        control = self.settings.control
        if control.when_inference_is_slow == "hold" or self._awaiting_first_chunk or not self._latency_ticks:
            return 1.0
        latency = max(self._latency_ticks)  # ticks from observation to merge, of the last few chunks
        started = self._infer_obs_tick
        remaining = latency - (k - started) if started is not None else latency
        ticks = max(1, remaining) + _MARGIN_TICKS
        left = self.queue.plan_left(k)
        # 15% headroom on the latency: a chunk now and then takes that much longer than the last three
        # (3.5 s against a 2.8 s median in a 60 s full-size run on the AVX2 EPYC).
        steady = sustainable_speed(self._chunk_len(), self._max_lag_ticks, latency * _LATENCY_HEADROOM + _MARGIN_TICKS)
        speed = max(control.min_speed, min(playback_speed(left, ticks, control.min_speed), steady))
        too_slow = steady < control.min_speed or (speed <= control.min_speed and left < ticks * control.min_speed)
        if too_slow and not self._speed_floor_warned:
            self._speed_floor_warned = True
            self._event(
                "warning",
                f"Inference takes {latency * self.period:.1f} s a chunk: even at {control.min_speed:g}x the plan "
                "runs out, so the arm holds between chunks.",
                "Use a faster inference path (see `lepetpal model check`), fewer flow steps, or a lower "
                "[control] min_speed.",
            )
        return speed

    def _read_failure(self, exc: BaseException) -> None:
        self._read_failures += 1
        limit = self.settings.safety.bus_retries
        if self._read_failures == limit + 1 and self._state != EngineState.ERROR:
            self._halt(EngineState.ERROR, f"bus errors: {exc}")
            self._event(
                "error",
                f"{self._read_failures} bus errors in a row ({exc}). Holding.",
                "Check the arm's 12 V supply and the USB cable, then re-arm.",
            )

    def _write_failure(self, exc: BaseException) -> None:
        self._write_failures += 1
        limit = self.settings.safety.bus_retries
        if self._write_failures == limit + 1 and self._state != EngineState.ERROR:
            self._halt(EngineState.ERROR, f"goal writes failing: {exc}")
            self._event(
                "error",
                f"{self._write_failures} goal writes failed in a row ({exc}). Holding.",
                "Check the arm's 12 V supply and the USB cable, then re-arm.",
            )

    def _health_failure(self, exc: BaseException) -> None:
        self._health_failures += 1
        limit = self.settings.safety.health_read_retries
        live = (*_ACTIVE, EngineState.MACRO, EngineState.READY)
        if self._health_failures == limit + 1 and self._state in live:
            # An unread temperature is not a safe one: hold rather than run on without the guard.
            self._halt(EngineState.ERROR, f"servo health unreadable: {exc}")
            self._event(
                "error",
                f"Servo health (temperature, load, voltage) unreadable {self._health_failures} times in a row "
                f"({exc}). Holding.",
                HEALTH_FIX,
            )

    def _check_heartbeat(self, now: float) -> None:
        bound = self.settings.safety.ui_heartbeat_s
        last = self._heartbeat_at
        if bound <= 0 or last is None or now - last <= bound:
            return
        if self._state not in (*_ACTIVE, EngineState.MACRO):
            return
        silent = now - last
        self._halt(EngineState.READY, f"UI not responding (no heartbeat for {silent:.1f} s)")
        self._event(
            "error",
            f"UI not responding: no heartbeat for {silent:.1f} s. Holding the arm.",
            "Nothing moves until you press start (F5) again once the screen answers.",
        )

    def _check_health(self) -> None:
        arm = self.arm
        if arm is None:
            return
        with self._bus_lock:
            try:
                health = arm.read_health()
            except Exception as exc:
                health_err: BaseException | None = exc
            else:
                health_err = None
        if health_err is not None:
            self._health_failure(health_err)
            return
        self._health_failures = 0
        self.coalescer.set_health(health)
        problem = health_problem(health, self.settings.safety)
        if problem and self._state in (*_ACTIVE, EngineState.MACRO):
            self._halt(EngineState.ERROR, f"servo health: {problem}")
            self._event("error", f"Holding: servo health: {problem}.", HEALTH_FIX)

    def _chunk_len(self) -> int:
        policy = self.policy
        n = policy.chunk_length if policy is not None else 50
        return min(n, self.settings.model.actions_per_chunk)

    # -------------------------------------------------------------------------------------- inference

    def _may_stand_in(self, camera: str, state: EngineState) -> bool:
        """A synthetic scene may replace a lost camera only where a blind policy cannot hurt anyone, or
        where the operator confirmed it for this start with the fallback on screen."""
        if not self.settings.safety.camera_fallback_synthetic:
            return False
        return state == EngineState.DRY_RUN or self.settings.is_sim or camera in self._confirmed_stand_ins

    def _frames(self, state: EngineState, epoch: int) -> dict[str, npt.NDArray[np.uint8]] | None:
        """Fresh frames for the policy (stand-ins where allowed); None while a camera starts, or after
        holding the arm for a camera fault."""
        reading: CameraReading = self._camera_guard.read(time.monotonic())
        if reading.faults:
            blocked = {n: why for n, why in reading.faults.items() if not self._may_stand_in(n, state)}
            if blocked:
                self._camera_fault(blocked, epoch)
                return None
            for name, why in reading.faults.items():
                reading.images[name] = self._camera_guard.stand_in(name)
                if name not in self._stand_in_announced:
                    self._stand_in_announced.add(name)
                    self._event("warning", f"Camera {name} gives no frames ({why}): the policy sees a synthetic "
                                "scene (dry-run, simulated arm or confirmed start).",
                                "Reconnect the camera; a live start on a real arm holds until it is back.")
        if reading.waiting:
            return None
        return reading.images

    def _camera_fault(self, faults: dict[str, str], epoch: int) -> None:
        what = "; ".join(f"{name}: {why}" for name, why in faults.items())
        with self._lock:
            if self._epoch != epoch or self._state not in (*_ACTIVE, EngineState.MACRO):
                return  # already held (or restarted) since this reading was planned
        self._halt(EngineState.ERROR, f"camera fault: {what}")
        fix = "Reconnect the camera (or fix [cameras] in lepetpal.toml), then re-arm and start."
        if self.settings.safety.camera_fallback_synthetic:
            fix += " Dry-run can go on with the synthetic scene, or start twice to confirm running on it."
        self._event("error", f"Camera fault ({what}). Holding: the policy must not act on missing or old frames.",
                    fix)

    def _camera_watch_loop(self) -> None:
        """Between inferences too (a chunk lasts over a second): a camera that stops holds the arm within
        about `safety.camera_timeout_s` plus this loop's period, not at the next inference."""
        while not self._stopping.wait(0.1):
            with self._lock:
                state, epoch = self._state, self._epoch
            if state in _ACTIVE:
                reading = self._camera_guard.read(time.monotonic(), faults_only=True)
                blocked = {n: why for n, why in reading.faults.items() if not self._may_stand_in(n, state)}
                if blocked:
                    self._camera_fault(blocked, epoch)

    def _inference_loop(self) -> None:
        policy = self.policy
        assert policy is not None
        merged = False
        while not self._stopping.is_set():
            if not merged:
                # Right after a merge, look again at once: waiting for the next tick would add up to a
                # period to every chunk's latency, which is what starves a policy as slow as half a chunk.
                self._infer_wake.wait(0.05)
                self._infer_wake.clear()
            merged = False
            with self._lock:
                state, epoch, task = self._state, self._epoch, self._task
                measured, obs_tick = self._measured, self._measured_tick
                first = self._awaiting_first_chunk
            if state not in _ACTIVE or measured is None:
                continue
            chunk_len = self._chunk_len()
            depth = self.queue.depth(self.queue.next_tick)
            if not first and not self._next_chunk_due(depth):
                continue
            images = self._frames(state, epoch)
            if images is None:
                continue
            if self._reset_policy:
                self._reset_policy = False
                policy.reset()
            obs = Observation(joints=measured.copy(), images=images, task=task, timestamp=time.monotonic())
            self._infer_obs_tick = obs_tick
            try:
                chunk = policy.infer(obs)
            except Exception as exc:
                self._infer_obs_tick = None
                if self._epoch == epoch:
                    self._halt(EngineState.ERROR, f"inference failed: {exc}")
                    self._event("error", f"Inference failed: {exc}. Holding.", "See the log; re-arm to retry.")
                continue
            merged = self._merge(chunk, epoch, obs_tick, task, chunk_len)
            self._infer_obs_tick = None

    def _merge(self, chunk: ActionChunk, epoch: int, obs_tick: int, task: str, chunk_len: int) -> bool:
        actions = np.asarray(chunk.actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != 6 or len(actions) == 0:
            reason = f"policy returned actions of shape {actions.shape}, expected (n, 6)"
        elif not np.all(np.isfinite(actions)):
            reason = "policy returned non-finite actions (NaN or inf)"
        else:
            reason = ""
        with self._lock:
            if self._epoch != epoch:
                return False  # stopped, e-stopped or restarted while inferring: this chunk is stale
            if not reason:
                # Latency in ticks of the last few chunks: keep that many actions (+2) when allowed to
                # run a little late, so the next chunk lands before the queue runs dry.
                self._latency_ticks.append(max(0, self.queue.next_tick - obs_tick - 1))
                info = self.queue.merge(
                    actions[:chunk_len],
                    obs_tick,
                    self.settings.control.blend_steps,
                    min_keep=max(self._latency_ticks) + _MARGIN_TICKS,
                    max_lag=self._max_lag_ticks,
                )
                self.chunk_count += 1
                self._awaiting_first_chunk = False  # from now on an empty queue is starvation
        if reason:
            self._halt(EngineState.ERROR, reason)
            self._event("error", f"Holding: {reason}.", "Check the checkpoint and its statistics; re-arm to retry.")
            return False
        sample = ChunkSample(
            t=time.monotonic(),
            timing=chunk.timing,
            length=min(len(actions), chunk_len),
            queue_depth_at_merge=info.depth_before,
            task=task,
        )
        self.coalescer.add_chunk(sample)
        if self.log is not None:
            self.log.chunk(sample)
        return True

    # ------------------------------------------------------------------------------------- telemetry

    def _publish_loop(self) -> None:
        last_state: EngineState | None = None
        last_sent = 0.0
        while not self._finished.is_set():
            self._finished.wait(self._telemetry_period)
            self._publish(force=False, last_state=last_state, last_sent=last_sent)
            last_state = self._state
            last_sent = time.monotonic()
        self._publish(force=True, last_state=None, last_sent=0.0)

    def _publish(self, force: bool, last_state: EngineState | None, last_sent: float) -> None:
        sink = self._on_telemetry
        if sink is None:
            batch = self.coalescer.take(**self.snapshot())  # drain so memory stays bounded
            self._record(batch)
            return
        if force or self.coalescer.pending() or self._state != last_state or time.monotonic() - last_sent > 0.5:
            batch = self.coalescer.take(**self.snapshot())
            self._record(batch)
            with contextlib.suppress(Exception):  # the receiver is gone; the engine keeps holding
                sink(batch)

    def _record(self, batch: TelemetryBatch) -> None:
        """Hand this batch's ticks to the recorder (a bounded, non-blocking queue: here, off the tick)."""
        if self.recorder is not None:
            with contextlib.suppress(Exception):  # a broken recorder must never stop the telemetry
                self.recorder.feed(batch)

    # -------------------------------------------------------------------------------------- shutdown

    def _shutdown(self, go_home: bool, torque_off: bool) -> None:
        if self._stopping.is_set():
            return
        self._cancel_load.set()
        if self._state in (*_ACTIVE, EngineState.MACRO):
            self._halt(self._idle(), "quitting")
        if go_home and self.arm is not None and not self._estopped and self._state in (
            EngineState.READY, EngineState.LOADING
        ):
            self._cmd_macro(Command("macro", name="home"))
            if self.state == EngineState.MACRO:
                self.wait_for((EngineState.READY, EngineState.ERROR, EngineState.ESTOP), timeout=30.0)
        self._stopping.set()
        for t in self._threads:
            if t.name in ("engine-actuator", "engine-inference") and t is not threading.current_thread():
                t.join(timeout=5.0)
        arm = self.arm
        if arm is not None:
            with self._bus_lock:
                try:
                    arm.disconnect(torque_off=torque_off)
                except Exception as exc:
                    self._event("warning", f"Disconnect: {exc}")
        closer = getattr(self.policy, "close", None)  # a policy in its own process
        if callable(closer):
            with contextlib.suppress(Exception):
                closer()
        for cam in self.cameras.values():
            with contextlib.suppress(Exception):
                cam.close()
        self._set_state(EngineState.DISCONNECTED, "disconnected")
        self._event("info", "Disconnected" + (" (torque off)." if torque_off else " (torque left on)."))
        if self.log is not None:
            self.log.close(
                ticks=self.tick_count,
                starved=self.starved_ticks,
                clamps=self.clamp_count,
                estops=self.estop_count,
                overruns=self.overruns,
            )
        self._finished.set()
