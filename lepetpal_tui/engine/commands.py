"""The state machine's transitions: one handler per command, chosen with `match`.

Halting commands (stop, e-stop) act before `apply` returns. A command that cannot be applied now says why
in a REFUSED event and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

import numpy as np

from lepetpal_tui.engine.camera_watch import CameraWatch
from lepetpal_tui.engine.control import ACTIVE, Control, MacroRun
from lepetpal_tui.engine.guarded_arm import ArmLike
from lepetpal_tui.engine.macros import macro_refusal, plan_macro
from lepetpal_tui.engine.pacing import Pacer
from lepetpal_tui.engine.publish import RecorderLike
from lepetpal_tui.engine.watchdog import Watchdog
from lepetpal_tui.joints import FloatArray
from lepetpal_tui.wire import (
    Command,
    EngineState,
    EStop,
    EventKind,
    Heartbeat,
    HoldCause,
    MarkEpisode,
    Quit,
    Rearm,
    RunMacro,
    SetDryRun,
    SetRecording,
    SetTask,
    Start,
    Stop,
    UiLost,
)


class CommandHandler:
    def __init__(self, control: Control, cameras: CameraWatch, pacer: Pacer, watchdog: Watchdog, *,
                 on_ui_lost: Callable[[str], None], on_quit: Callable[[bool], None],
                 recorder: RecorderLike | None = None) -> None:
        self._c = control
        self._cameras = cameras
        self._pacer = pacer
        self._watchdog = watchdog
        self._on_ui_lost = on_ui_lost
        self._on_quit = on_quit
        self._recorder = recorder

    def apply(self, cmd: Command) -> None:
        match cmd:
            case Start():
                self.start(cmd.task, cmd.confirm_stand_in)
            case Stop():
                self._stop()
            case SetTask():
                self._set_task(cmd.task)
            case EStop():
                self._estop(cmd.torque_off)
            case Rearm():
                self._rearm()
            case SetDryRun():
                self._set_dry_run(cmd.on)
            case RunMacro():
                self.macro(cmd.name)
            case Quit():
                self._on_quit(cmd.go_home)
            case UiLost():
                self._on_ui_lost(cmd.reason or "the UI said it is going away")
            case SetRecording() | MarkEpisode():
                self._record(cmd)
            case Heartbeat():
                pass  # the facade notes it before dispatch
            case _:
                assert_never(cmd)

    def _record(self, cmd: SetRecording | MarkEpisode) -> None:
        if self._recorder is None:
            self._refuse("Recording is not available in this engine.")
            return
        level, text = self._recorder.command(cmd)
        if text:
            self._c.event(level, text, kind=EventKind.RECORDING)

    def _refuse(self, why: str) -> None:
        self._c.event("warning", why, kind=EventKind.REFUSED)

    # ------------------------------------------------------------------------------------------ e-stop

    def _estop(self, torque_off: bool) -> None:
        c = self._c
        with c.lock:
            c.estopped = True
            c.counters.estops += 1
        if torque_off:
            c.halt(EngineState.ESTOP, "e-stop with torque OFF: the arm is limp", HoldCause.ESTOP_TORQUE_OFF,
                   torque_off=True)
            c.event("warning", "E-STOP, TORQUE OFF: the arm is limp and falls under its own weight.",
                    "Support the arm, then re-arm (torque comes back on at the measured pose).", EventKind.ESTOP)
            return
        # No bus transaction in the e-stop path: it must not wait behind a slow or failing bus, and nothing
        # is written after it. The servos hold the last goal, at most max_step_per_tick beyond the previous
        # one, with torque on.
        c.halt(EngineState.ESTOP, "e-stop (latched): re-arm to continue", HoldCause.ESTOP, hold=False)
        with c.lock:
            gap = (float(np.max(np.abs(c.prev_goal - c.measured)))
                   if c.prev_goal is not None and c.measured is not None else 0.0)
        c.event("warning", f"E-STOP: holding at the last goal ({gap:.1f} from the last measured pose), torque on.",
                "Re-arm to continue.", EventKind.ESTOP)

    def _stop(self) -> None:
        c = self._c
        if c.state in (EngineState.ESTOP, EngineState.DISCONNECTED):
            return
        queued = c.queued_task
        c.halt(c.idle() if c.state != EngineState.ERROR else EngineState.ERROR, "stopped",
               HoldCause.STOPPED if c.state != EngineState.ERROR else c.hold_cause)
        if not queued:  # else halt said the queued start was cancelled
            c.event("info", "Stopped: holding the measured pose.", kind=EventKind.STATE)

    def _rearm(self) -> None:
        c = self._c
        arm = c.arm
        with c.lock:
            if c.state not in (EngineState.ESTOP, EngineState.ERROR):
                c.event("info", "Re-arm ignored: not e-stopped or faulted.", kind=EventKind.REFUSED)
                return
            was_torque_off = c.hold_cause == HoldCause.ESTOP_TORQUE_OFF
        pose = None
        if arm is not None:
            def rearm_on_bus(bus: ArmLike) -> FloatArray:
                measured = bus.read_joints()
                if was_torque_off:
                    # The goal register still holds the pre-fall goal: point it at the measured pose
                    # before torque comes back, or the arm would jump.
                    bus.write_goals(measured)
                    bus.set_torque(True)
                return bus.hold()

            result = arm.call(rearm_on_bus, writes=True)
            if not result.ok:
                c.event("error", f"Re-arm failed on the bus: {result.error}", "Check power and cable, retry.",
                        EventKind.BUS_FAULT)
                return
            pose = result.value
        with c.lock:
            c.estopped = False
            self._watchdog.reset()
            c.epoch += 1
            c.prev_goal = None if pose is None else np.asarray(pose, dtype=np.float64)
            idle = c.idle() if arm is not None else EngineState.DISCONNECTED
            failed = idle == EngineState.ERROR
            c.set_state(idle, "the policy failed to load: see the Model pane" if failed else "",
                        HoldCause.LOAD_FAILED if failed else HoldCause.NONE)
        c.event("info", "Re-armed. The policy restarts from a fresh chunk when started.", kind=EventKind.STATE)

    # ------------------------------------------------------------------------------------------- start

    def start(self, task_text: str, confirm_stand_in: bool = False) -> None:
        c = self._c
        with c.lock:
            task = task_text.strip() or c.task
            why = ""
            if c.state == EngineState.ESTOP:
                why = "the arm is e-stopped. Re-arm first."
            elif c.state == EngineState.ERROR:
                why = f"the engine is holding after a fault ({c.hold_reason}). Fix it, then re-arm."
            elif c.state == EngineState.DISCONNECTED:
                why = "the arm is not connected yet."
            elif not task:
                why = "no task given. Type what the arm should do."
            elif not c.policy_ready and c.state in (EngineState.CONNECTING, EngineState.LOADING):
                # Queued, not refused: the typed task starts as soon as the policy is installed (see the
                # facade's setup); F6, an e-stop or any fault before then drops it.
                c.queued_task = task
                c.set_state(c.state, f'start of "{task}" queued', HoldCause.QUEUED_START)
                c.event("info", f'Start queued: "{task}" starts when the policy is ready (F6 or F12 cancels).',
                        kind=EventKind.STATE)
                return
            elif not c.policy_ready:
                why = "the policy failed to load (see the Model pane)."
            elif c.measured is None:
                why = "the joints have not been read yet."
            else:
                why = self._watchdog.motion_refusal()
            confirmed: set[str] = set()
            if not why:
                why, confirmed = self._cameras.start_refusal(confirm_stand_in)
            if why:
                self._refuse(f"Start refused: {why}")
                return
            c.epoch += 1
            c.run += 1  # the episode a recorded tick belongs to
            c.confirmed_stand_ins = confirmed
            c.task = task
            c.macro = None
            c.queue.reset(c.measured_tick + 1)
            c.prev_goal = None if c.measured is None else c.measured.copy()  # ramp from here
            c.awaiting_first_chunk = True
            c.reset_policy = True
            self._pacer.new_run()
            c.set_state(EngineState.DRY_RUN if c.dry_run else EngineState.RUNNING)
        c.infer_wake.set()
        c.event("info", f'Running "{task}"' + (" in dry-run (no goal writes)." if c.dry_run else "."),
                kind=EventKind.STATE)

    def _set_task(self, text: str) -> None:
        task = text.strip()
        if not task:
            self._refuse("Empty task ignored.")
            return
        with self._c.lock:
            self._c.task = task
        self._c.event("info", f'Task set to "{task}" (used from the next chunk).', kind=EventKind.STATE)

    def _set_dry_run(self, on: bool) -> None:
        c = self._c
        if on and c.state == EngineState.MACRO:
            # Dry-run means no goal writes: a macro under way stops (and holds) rather than go on moving.
            c.halt(c.idle(), "dry-run on: macro stopped", HoldCause.STOPPED)
            with c.lock:
                c.dry_run = True
            c.event("info", "Dry-run on: the macro stopped, holding the measured pose; no goals are written.",
                    kind=EventKind.STATE)
            return
        if not on and c.state == EngineState.DRY_RUN:
            why = self._watchdog.motion_refusal() or self._cameras.live_refusal()
            if why:
                self._refuse(f"Dry-run stays on: {why}")
                return
        with c.lock:
            c.dry_run = on
            going = ""
            if on and c.state == EngineState.RUNNING:
                c.set_state(EngineState.DRY_RUN)
                going = "dry"
            elif not on and c.state == EngineState.DRY_RUN:
                # Going live: the would-be goals were never sent, so ramp from where the arm really is.
                c.prev_goal = None if c.measured is None else c.measured.copy()
                c.set_state(EngineState.RUNNING)
        if going == "dry":
            # Bump the epoch so a goal decided as RUNNING this tick is not written, then hold.
            with c.lock:
                c.epoch += 1
            c.hold_pose()
        c.event("info", "Dry-run on: no goals are written." if on else "Dry-run off: goals are written.",
                kind=EventKind.STATE)

    # ------------------------------------------------------------------------------------------- macro

    def macro(self, name: str) -> None:
        c = self._c
        with c.lock:
            why = macro_refusal(name, c.settings.macros, c.measured, c.estopped)
            if not why and c.state in (EngineState.ERROR, EngineState.DISCONNECTED, EngineState.CONNECTING):
                why = f'Macro "{name}" refused: the engine is {c.state.value}.'
            if not why and c.dry_run:
                why = f'Macro "{name}" refused in dry-run: it would move the arm. Leave dry-run first.'
            if not why and (health := self._watchdog.motion_refusal()):
                why = f'Macro "{name}" refused: {health}'
            if why:
                self._refuse(why)
                return
            assert c.measured is not None
            start = c.measured.copy()
        # Stop the policy first (its chunk must not mix into the macro), then plan from the measured pose.
        if c.state in ACTIVE:
            c.halt(EngineState.READY, "starting macro", HoldCause.STOPPED)
        with c.lock:
            c.queued_task = ""  # the operator chose the macro instead
            c.epoch += 1
            c.macro = MacroRun(name, plan_macro(c.settings.macros[name], start, c.settings.control.rate_hz))
            c.prev_goal = start
            c.set_state(EngineState.MACRO, f"macro {name}")
        c.event("info", f'Macro "{name}" started.', kind=EventKind.STATE)
