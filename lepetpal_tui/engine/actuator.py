"""The actuator: one tick every 1/rate_hz on absolute deadlines, the only regular user of the bus.

A tick reads the joints, takes this tick's action from the chunk queue (or the macro), passes it through
the safety filter and writes it (not in dry-run), all under the epoch it started with: a halt in between
makes the write a no-op inside the bus lock. Nothing here waits for inference, cameras or telemetry.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from lepetpal_tui.engine.control import ACTIVE, Control, MacroRun
from lepetpal_tui.engine.pacing import Pacer
from lepetpal_tui.engine.safety import SafetyFilter
from lepetpal_tui.engine.wakeup import RealtimeWakeup
from lepetpal_tui.engine.watchdog import Watchdog
from lepetpal_tui.joints import FloatArray
from lepetpal_tui.wire import EngineState, EventKind, HoldCause, TickSample

ACTUATOR_NICE = -10
HEALTH_EVERY_S = 1.0  # servo health (temperature, load, voltage, fault flags) costs bus time: about once a second
_NO_CLAMPS: tuple[bool, ...] = (False,) * 6


def raise_thread_priority() -> bool:
    """Ask the kernel to favour the calling thread (nice -10) when the CPU is contended.

    The weight the tick's work has when it does not run real-time (`engine.wakeup`: no permission, or a bus
    client that spins while it waits for a reply). Needs root or
    CAP_SYS_NICE (or a nice limit in /etc/security/limits.conf); without it, nothing changes.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ACTUATOR_NICE)
    except (OSError, AttributeError):
        return False
    return True


def slot_for(now: float, t0: float, k: int, period: float) -> tuple[int, float, bool]:
    """(slot, lateness, skipped) for a tick due in slot `k` of the grid t0 + k * period that starts at
    `now`. A tick that overran a whole period runs in the current slot (the missed ones never run: the
    arm gets the goal of now, not a backlog). The lateness is taken against the slot it was due in, so
    that a stall of several periods shows as what it was, not as a small lateness against the new slot."""
    late = now - (t0 + k * period)
    if late >= period:
        return int((now - t0) / period), late, True
    return k, late, False


class Actuator:
    def __init__(self, control: Control, pacer: Pacer, watchdog: Watchdog) -> None:
        self._c = control
        self._pacer = pacer
        self._watchdog = watchdog
        self.filter = SafetyFilter(control.settings.arm)
        self.period = 1.0 / control.settings.control.rate_hz
        self._late_s = 0.0
        self._speed = 1.0

    @property
    def speed(self) -> float:
        """The playback speed factor of the latest tick."""
        return self._speed

    def run(self, stopping: threading.Event) -> None:
        if not raise_thread_priority():
            self._c.event("info", "Control thread runs at normal priority (no permission to raise it).",
                          "Allow a negative nice (CAP_SYS_NICE or limits.conf) for steadier ticks on a busy CPU.")
        wakeup = RealtimeWakeup(self._c.settings.control.realtime_wakeup)
        if not wakeup.available:
            self._c.event("info", f"Control ticks wake at normal priority: {wakeup.why_not}.",
                          "Allow real-time priority (CAP_SYS_NICE, or rtprio in limits.conf) for punctual "
                          "ticks on a busy CPU.")
        period = self.period
        t0 = time.monotonic()
        k = 0
        last_start = t0
        health_due = t0 + HEALTH_EVERY_S
        while not stopping.is_set():
            deadline = t0 + k * period
            arm = self._c.arm
            # Real-time through the tick's work only while its bus waits sleep (never spin): engine.wakeup.
            wakeup.sleep(deadline - time.monotonic(), keep=arm is not None and arm.waits_block)
            now = time.monotonic()
            k, late, skipped = slot_for(now, t0, k, period)
            if skipped:
                self._c.counters.overruns += 1
            try:
                self._late_s = late
                self.tick(k, now, now - last_start)
                # By the clock, not by slot number: ticks that overrun skip slots, and a steady overrun of
                # a few periods could skip the one slot a count would check in, every time.
                if now >= health_due:
                    health_due = now + HEALTH_EVERY_S
                    self._watchdog.check_health()
                self._watchdog.check_heartbeat(time.monotonic())
            except Exception as exc:  # a bug must not leave the arm moving: hold and report
                if self._c.state != EngineState.ESTOP:  # never over an e-stop's latch
                    self._c.halt(EngineState.ERROR, f"internal error: {exc}", HoldCause.FAULT)
                self._c.event("error", f"Control loop error: {exc!r}", "Please report this with the session log.",
                              EventKind.INTERNAL)
            last_start = now
            k += 1

    def tick(self, k: int, start: float, period_s: float) -> None:
        c = self._c
        arm = c.arm
        assert arm is not None
        read = arm.call(lambda a: np.asarray(a.read_joints(), dtype=np.float64))
        measured = read.value
        if measured is None:
            self._watchdog.read_failed(read.error or RuntimeError("no reading"))
            self._emit(k, start, period_s, None, None, False, _NO_CLAMPS, False, None)
            return
        self._watchdog.read_ok()
        with c.lock:
            c.measured, c.measured_tick = measured, k
            state, epoch, prev, dry = c.state, c.epoch, c.prev_goal, c.dry_run
            awaiting, macro = c.awaiting_first_chunk, c.macro
        proposed, starved = self._proposal(k, state, epoch, awaiting, macro)
        goal: FloatArray | None = None
        clamped = _NO_CLAMPS
        if proposed is not None:
            result = self.filter.apply(proposed, measured if prev is None else prev)
            clamped = result.clamped
            if result.goal is None:
                c.halt(EngineState.ERROR, result.reason, HoldCause.FAULT)
                c.event("error", f"Holding: {result.reason}.", "Check the policy output; re-arm to retry.",
                        EventKind.POLICY_OUTPUT_FAULT)
                self._emit(k, start, period_s, measured, None, False, clamped, starved, proposed)
                return
            goal = result.goal
            c.counters.clamps += result.clamp_count
        written = False
        if goal is not None and not (dry and state != EngineState.MACRO):
            sent = arm.write_if(goal, lambda: c.epoch == epoch and not c.estopped)
            written = bool(sent.value)
            if written:
                self._watchdog.write_ok()
            elif sent.error is not None:
                self._watchdog.write_failed(sent.error)
        if goal is not None:
            with c.lock:
                # Going live during this tick reset prev_goal to the measured pose (the dry goals were
                # never sent): a would-be goal decided as dry must not replace it, or the first live goal
                # would be rate-limited against where the arm never went.
                if c.epoch == epoch and c.dry_run == dry:
                    c.prev_goal = goal
        if starved:
            c.counters.starved += 1
        self._emit(k, start, period_s, measured, goal, written, clamped, starved, proposed)

    def _proposal(self, k: int, state: EngineState, epoch: int, awaiting: bool,
                  macro: MacroRun | None) -> tuple[FloatArray | None, bool]:
        """This tick's goal before the filter (policy plan or macro), and whether a running policy starved."""
        c = self._c
        self._speed = 1.0
        if state in ACTIVE:
            self._speed = self._pacer.speed(k, c.queue, awaiting)
            proposed = c.queue.pop(k, self._speed)
            if self._pacer.chunk_due(c.queue.depth(k + 1)):
                c.infer_wake.set()
            return proposed, proposed is None and not awaiting
        if state != EngineState.MACRO or macro is None:
            return None, False
        if macro.index < len(macro.goals):
            macro.index += 1
            return macro.goals[macro.index - 1], False
        with c.lock:
            if c.epoch == epoch:
                c.macro = None
                c.set_state(c.idle())
        c.event("info", f'Macro "{macro.name}" done.', kind=EventKind.STATE)
        return None, False

    def _emit(self, k: int, start: float, period_s: float, measured: FloatArray | None, goal: FloatArray | None,
              written: bool, clamped: tuple[bool, ...], starved: bool, raw: FloatArray | None) -> None:
        c = self._c
        c.counters.ticks += 1
        sample = TickSample(
            t=start,
            period_s=period_s,
            work_s=time.monotonic() - start,
            measured=tuple(float(v) for v in measured) if measured is not None else (float("nan"),) * 6,
            goal=None if goal is None else tuple(float(v) for v in goal),
            written=written,
            clamped=clamped,
            starved=starved,
            queue_depth=c.queue.depth(k + 1),
            speed=self._speed,
            raw_action=None if raw is None else tuple(float(v) for v in raw),
            run=c.run if c.state in ACTIVE else -1,
        )
        c.coalescer.add_tick(sample)
        if c.log is not None:
            c.log.tick(sample, c.state, late_s=self._late_s)
