"""The engine's control state: one lock, the epoch, what the state machine knows, events and `halt`.

Every transition that stops the arm ("halt": stop, e-stop, fault, UI lost) bumps `epoch`. The actuator
decides a goal under one epoch and writes it only if the epoch is unchanged *inside the bus lock*
(`GuardedArm.write_if`), so once a halt returns no policy or macro goal can reach the bus. Chunks
computed under an old epoch are dropped. The command handlers (commands.py), the actuator, inference and
the watchdog all read and change this one object under `lock`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from lepetpal_tui.engine.chunks import ChunkQueue
from lepetpal_tui.engine.guarded_arm import GuardedArm
from lepetpal_tui.engine.publish import TelemetryCoalescer
from lepetpal_tui.engine.session_log import SessionLog
from lepetpal_tui.joints import FloatArray
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import EngineEvent, EngineSnapshot, EngineState, EventKind, HoldCause, Level

ACTIVE = (EngineState.RUNNING, EngineState.DRY_RUN)
MOVING = (*ACTIVE, EngineState.MACRO)


@dataclass
class MacroRun:
    name: str
    goals: FloatArray
    index: int = 0


@dataclass
class Counters:
    """Totals since the session started (telemetry, the session log's end record, the benchmarks)."""

    ticks: int = 0
    starved: int = 0
    clamps: int = 0
    estops: int = 0
    overruns: int = 0
    chunks: int = 0


class Control:
    """State shared by the engine's threads. Fields are read and written under `lock`."""

    def __init__(self, settings: Settings, coalescer: TelemetryCoalescer, log: SessionLog | None) -> None:
        self.settings = settings
        self.coalescer = coalescer
        self.log = log
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.state = EngineState.DISCONNECTED
        self.hold_reason = ""
        self.hold_cause = HoldCause.NONE
        self.epoch = 0
        self.run = 0  # policy starts so far: the episode a recorded tick belongs to
        self.estopped = False
        self.dry_run = settings.control.dry_run
        self.task = ""
        self.prev_goal: FloatArray | None = None  # the last goal sent (the safety filter's reference)
        self.measured: FloatArray | None = None
        self.measured_tick = -1
        self.awaiting_first_chunk = False
        self.reset_policy = False
        self.macro: MacroRun | None = None
        self.queued_task = ""  # a start that waits for the policy (LOADING); any halt drops it
        self.policy_ready = False
        self.load_failed = False
        self.queue = ChunkQueue()
        self.counters = Counters()
        self.arm: GuardedArm | None = None  # set once connected
        self.infer_wake = threading.Event()
        self.confirmed_stand_ins: set[str] = set()  # cameras the operator chose to run without, this start

    # ---------------------------------------------------------------------------------------- events

    def event(self, level: Level, message: str, fix: str = "", kind: EventKind = EventKind.INFO) -> None:
        self.add_event(EngineEvent(time.monotonic(), level, message, fix, kind))

    def add_event(self, e: EngineEvent) -> None:
        self.coalescer.add_event(e)
        if self.log is not None:
            self.log.event(e)

    # ----------------------------------------------------------------------------------------- state

    def set_state(self, state: EngineState, reason: str = "", cause: HoldCause = HoldCause.NONE) -> None:
        with self.changed:
            self.state = state
            self.hold_reason = reason
            self.hold_cause = cause
            self.changed.notify_all()

    def idle(self) -> EngineState:
        """Where the arm holds when nothing runs: READY only once a start would be accepted."""
        if self.policy_ready:
            return EngineState.READY
        return EngineState.ERROR if self.load_failed else EngineState.LOADING

    def snapshot(self) -> EngineSnapshot:
        c = self.counters
        return EngineSnapshot(
            state=self.state,
            task=self.task,
            dry_run=self.dry_run,
            starved_ticks=c.starved,
            clamp_count=c.clamps,
            estop_count=c.estops,
            tick_count=c.ticks,
            hold_reason=self.hold_reason,
            hold_cause=self.hold_cause,
        )

    # ------------------------------------------------------------------------------------------ halt

    def halt(self, state: EngineState, reason: str, cause: HoldCause, *, torque_off: bool = False,
             hold: bool = True) -> None:
        """Stop policy/macro output now; then hold the measured pose, or cut torque, or (hold=False) just
        write nothing more, so the servos stay at the last goal they were given."""
        with self.lock:
            self.epoch += 1
            self.macro = None
            dropped, self.queued_task = self.queued_task, ""
            self.queue.clear()
            self.confirmed_stand_ins = set()  # a confirmation covers one start only
            if self.state != EngineState.DISCONNECTED:
                self.set_state(state, reason, cause)
        if dropped:
            self.event("info", f'Queued start of "{dropped}" cancelled ({reason}).', kind=EventKind.STATE)
        # From here no goal decided before can pass the actuator's epoch check (made inside the bus lock),
        # so at most a write already in flight (about a millisecond) still reaches the bus.
        arm = self.arm
        if arm is None or not (hold or torque_off):
            return
        pose: FloatArray | None = None
        if torque_off:
            error = arm.call(lambda a: a.set_torque(False), writes=True).error
        else:
            held = arm.call(lambda a: a.hold(), writes=True)
            error, pose = held.error, held.value
        if error is not None:
            self.event("error", f"Hold failed on the bus: {error}", "Check the arm's power and USB cable.",
                       EventKind.BUS_FAULT)
        with self.lock:
            if pose is not None:
                self.prev_goal = np.asarray(pose, dtype=np.float64)

    def hold_pose(self) -> None:
        """Hold the measured pose without a state change (dry-run on)."""
        arm = self.arm
        if arm is None:
            return
        held = arm.call(lambda a: a.hold(), writes=True)
        if not held.ok:
            self.event("error", f"Hold failed on the bus: {held.error}", kind=EventKind.BUS_FAULT)
            return
        with self.lock:
            self.prev_goal = np.asarray(held.value, dtype=np.float64)
