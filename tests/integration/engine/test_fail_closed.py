"""Faults the engine cannot see through hold the arm, on the simulated arm's packet trace.

Each test: the fault arrives while the policy drives the arm; the engine holds within a stated bound
(no Goal_Position on the trace after the hold), says why, stays held when the fault clears, and moves
again only after an explicit re-arm and start. Bounds are generous for a loaded 2-core machine; without
the guard the engine keeps writing goals for the whole window, so each test still fails.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import faults

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    EngineEvent,
    EngineState,
    EStop,
    Rearm,
    SetDryRun,
    Start,
    Stop,
    TelemetryBatch,
)

from .conftest import goal_writes, sim_settings  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow

CAMERA_TIMEOUT_S = 0.5


def _as_real_arm(sim: Any) -> dict[str, Any]:
    """arm.port naming the pty itself: the engine treats the arm as real (arm.port = "sim" is the
    simulated arm, where a synthetic stand-in for a lost camera is allowed)."""
    return {"port": sim.port}


class Events:
    """Every engine event, from the telemetry the UI would get."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[EngineEvent] = []

    def __call__(self, batch: TelemetryBatch) -> None:
        with self._lock:
            self.items.extend(batch.events)

    def text(self) -> str:
        with self._lock:
            return "\n".join(f"{e.level}: {e.message} | {e.fix}" for e in self.items)

    def has(self, *parts: str, timeout: float = 2.0) -> bool:
        """All `parts` in the event text within `timeout` (telemetry comes at about 20 Hz)."""
        deadline = time.monotonic() + timeout
        while not all(p in self.text() for p in parts):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def _scripted(settings: Settings) -> Any:
    from lepetpal_tui.policy.load import load_policy

    def make(on_status: Any, cancel: threading.Event) -> Any:
        return load_policy(settings.model, settings.cameras, settings.arm.units, on_status, cancel,
                           rate_hz=settings.control.rate_hz)

    return make


def _engine(settings: Settings, sim: Any, events: Events, *, arm_cls: Any = None,
            camera: Any = None) -> Engine:
    from lepetpal_tui.arm.adapter import Arm

    make_arm = arm_cls or Arm
    engine = Engine(
        settings,
        arm_factory=lambda: make_arm(settings.arm, sim.port, settings.safety, is_sim=True),
        policy_factory=_scripted(settings),
        camera_factory=(lambda on_event: {"front": camera}) if camera is not None else None,
        on_telemetry=events,
    )
    engine.start()
    assert engine.wait_policy(60.0), "policy did not load"
    assert engine.wait_for((EngineState.READY,), 10.0)
    return engine


def _start_and_drive(engine: Engine, sim: Any, state: EngineState = EngineState.RUNNING) -> None:
    engine.submit(Start(task="wave"))
    assert engine.state == state, engine.snapshot()
    time.sleep(1.0)
    writes = goal_writes(sim.drain_trace())
    if state == EngineState.RUNNING:
        assert writes, "the policy was not driving the arm before the fault"


def _wait_held(engine: Engine, t_fault: float, bound_s: float) -> float:
    assert engine.wait_for((EngineState.ERROR, EngineState.READY), bound_s + 5.0), (
        f"still {engine.state.value} {bound_s + 5.0:g} s after the fault"
    )
    held_after = time.monotonic() - t_fault
    assert held_after <= bound_s, f"held {held_after:.2f} s after the fault (bound {bound_s:g} s)"
    return held_after


def _no_goal_after_hold(sim: Any, seconds: float = 1.0) -> None:
    time.sleep(0.2)  # the halt's own hold write (present pose as the goal) lands right after the state change
    sim.clear_trace()
    time.sleep(seconds)
    writes = goal_writes(sim.trace())
    assert writes == [], f"{len(writes)} Goal_Position writes after the hold"


def _recovers_only_on_start(engine: Engine, sim: Any) -> None:
    """Held with the fault gone; an explicit re-arm (if faulted) and start drive the arm again."""
    _no_goal_after_hold(sim, 1.0)
    assert engine.state in (EngineState.ERROR, EngineState.READY)
    if engine.state == EngineState.ERROR:
        engine.submit(Rearm())
        assert engine.state == EngineState.READY
        _no_goal_after_hold(sim, 0.5)  # re-arm alone moves nothing
    engine.submit(Start(task="wave"))
    assert engine.state == EngineState.RUNNING, engine.snapshot()
    time.sleep(1.0)
    assert engine.state == EngineState.RUNNING, engine.snapshot()
    assert len(goal_writes(sim.trace())) >= 6 * 5, "the arm did not move again after the explicit start"


def test_a_lost_reply_at_connect_is_retried_and_reported(sim_arm: Any, tmp_path: Path) -> None:
    # LeRobot's handshake pings each servo once: one lost reply used to leave the engine in ERROR
    # ("arm connection failed") for good.
    sim_arm.set_fault("lost_reply", 2, 1)
    settings = sim_settings(tmp_path, model={"mode": "scripted"})
    events = Events()
    engine = _engine(settings, sim_arm, events)
    try:
        assert events.has("The arm connected on try ", "motor check failed", "check the USB cable")
        engine.submit(Start(task="wave"))
        assert engine.wait_for((EngineState.RUNNING,), 5.0)
    finally:
        engine.close()


# ----------------------------------------------------------------------------------------------- camera


@pytest.mark.parametrize("fallback", [False, True], ids=["fallback_off", "fallback_on"])
@pytest.mark.parametrize("how", ["stale", "failed"])
def test_live_camera_that_stops_holds_whatever_the_fallback(sim_arm: Any, tmp_path: Path, fallback: bool,
                                                            how: str) -> None:
    settings = sim_settings(tmp_path, model={"mode": "scripted"}, arm=_as_real_arm(sim_arm),
                            safety={"camera_timeout_s": CAMERA_TIMEOUT_S, "camera_fallback_synthetic": fallback})
    cam, events = faults.StoppingCamera(), Events()
    engine = _engine(settings, sim_arm, events, camera=cam)
    try:
        _start_and_drive(engine, sim_arm)
        t_fault = time.monotonic()
        cam.stop("" if how == "stale" else 'camera "front": camera device 0 stopped delivering frames')
        # Stale: the last frame ages past the bound; failed: the source says so at once. The watch loop
        # looks every 0.1 s.
        _wait_held(engine, t_fault, CAMERA_TIMEOUT_S + 1.0 if how == "stale" else 1.0)
        assert engine.state == EngineState.ERROR
        assert "camera fault" in engine.snapshot().hold_reason
        assert events.has("Camera fault (front"), events.text()
        cam.resume()
        _recovers_only_on_start(engine, sim_arm)
    finally:
        engine.close()


def test_dry_run_goes_on_with_the_synthetic_scene_when_allowed(sim_arm: Any, tmp_path: Path) -> None:
    settings = sim_settings(tmp_path, model={"mode": "scripted"}, control={"dry_run": True}, arm=_as_real_arm(sim_arm),
                            safety={"camera_timeout_s": CAMERA_TIMEOUT_S, "camera_fallback_synthetic": True})
    cam, events = faults.StoppingCamera(), Events()
    engine = _engine(settings, sim_arm, events, camera=cam)
    try:
        _start_and_drive(engine, sim_arm, EngineState.DRY_RUN)
        cam.stop()
        time.sleep(CAMERA_TIMEOUT_S + 0.5)
        chunks = engine.chunk_count
        time.sleep(3.0)
        assert engine.state == EngineState.DRY_RUN, engine.snapshot()
        assert engine.chunk_count > chunks, "dry-run stopped inferring on the synthetic scene"
        assert events.has("the policy sees a synthetic scene"), events.text()
        assert goal_writes(sim_arm.trace()) == []
        # Going live on the stand-in would be a live arm acting on a plan made from a synthetic scene:
        # refused, dry-run stays on, and not one goal reaches the arm.
        engine.submit(SetDryRun(on=False))
        assert engine.state == EngineState.DRY_RUN and engine.snapshot().dry_run
        assert events.has("Dry-run stays on: camera fault (front"), events.text()
        time.sleep(1.0)
        assert engine.state == EngineState.DRY_RUN
        assert goal_writes(sim_arm.trace()) == []
    finally:
        engine.close()


def test_dry_run_holds_on_camera_loss_without_fallback(sim_arm: Any, tmp_path: Path) -> None:
    settings = sim_settings(tmp_path, model={"mode": "scripted"}, control={"dry_run": True}, arm=_as_real_arm(sim_arm),
                            safety={"camera_timeout_s": CAMERA_TIMEOUT_S, "camera_fallback_synthetic": False})
    cam, events = faults.StoppingCamera(), Events()
    engine = _engine(settings, sim_arm, events, camera=cam)
    try:
        _start_and_drive(engine, sim_arm, EngineState.DRY_RUN)
        t_fault = time.monotonic()
        cam.stop()
        _wait_held(engine, t_fault, CAMERA_TIMEOUT_S + 1.0)
        assert engine.state == EngineState.ERROR and "camera fault" in engine.snapshot().hold_reason
        chunks = engine.chunk_count
        time.sleep(1.0)
        assert engine.chunk_count == chunks, "inference went on without a camera"
    finally:
        engine.close()


def test_simulated_arm_runs_on_the_stand_in(sim_arm: Any, tmp_path: Path) -> None:
    """arm.port = "sim": nobody can be hurt, so a lost camera's synthetic scene keeps the demo going."""
    settings = sim_settings(tmp_path, model={"mode": "scripted"},
                            safety={"camera_timeout_s": CAMERA_TIMEOUT_S, "camera_fallback_synthetic": True})
    assert settings.is_sim
    cam, events = faults.StoppingCamera(), Events()
    engine = _engine(settings, sim_arm, events, camera=cam)
    try:
        _start_and_drive(engine, sim_arm)
        cam.stop()
        time.sleep(CAMERA_TIMEOUT_S + 2.0)
        assert engine.state == EngineState.RUNNING, engine.snapshot()
        assert events.has("the policy sees a synthetic scene"), events.text()
        assert goal_writes(sim_arm.drain_trace())
    finally:
        engine.close()


def test_live_start_on_a_lost_camera_needs_confirmation(sim_arm: Any, tmp_path: Path) -> None:
    settings = sim_settings(tmp_path, model={"mode": "scripted"}, arm=_as_real_arm(sim_arm),
                            safety={"camera_timeout_s": CAMERA_TIMEOUT_S, "camera_fallback_synthetic": True})
    cam, events = faults.StoppingCamera(), Events()
    cam.stop('camera "front": camera device 0 failed to open')
    engine = _engine(settings, sim_arm, events, camera=cam)
    try:
        sim_arm.clear_trace()
        engine.submit(Start(task="wave"))
        assert engine.state == EngineState.READY
        time.sleep(0.5)
        assert events.has("Press start again", "act blind"), events.text()
        assert goal_writes(sim_arm.trace()) == []
        engine.submit(Start(task="wave"))  # the operator confirms, the fallback on screen
        assert engine.state == EngineState.RUNNING
        time.sleep(1.5)
        assert engine.state == EngineState.RUNNING, engine.snapshot()
        assert events.has("(confirmed)"), events.text()
        assert len(goal_writes(sim_arm.trace())) > 6 * 10
        # The confirmation covered that start only: the next one asks again.
        engine.submit(Stop())
        engine.submit(Start(task="wave"))
        assert engine.state == EngineState.READY
    finally:
        engine.close()


# -------------------------------------------------------------------------------------------------- bus


def test_goal_writes_that_keep_failing_hold(sim_arm: Any, tmp_path: Path) -> None:
    """Reads succeed every tick (which used to reset the count): writes alone must reach the bound."""
    settings = sim_settings(tmp_path, model={"mode": "scripted"})
    events = Events()
    engine = _engine(settings, sim_arm, events, arm_cls=faults.WriteFailingArm)
    arm = engine.arm
    assert isinstance(arm, faults.WriteFailingArm)
    try:
        _start_and_drive(engine, sim_arm)
        t_fault = time.monotonic()
        arm.fail_writes.set()
        period = 1.0 / settings.control.rate_hz
        _wait_held(engine, t_fault, (settings.safety.bus_retries + 1) * period + 1.0)
        assert engine.state == EngineState.ERROR
        assert "goal writes failing" in engine.snapshot().hold_reason
        assert events.has("goal writes failed in a row"), events.text()
        arm.fail_writes.clear()
        _recovers_only_on_start(engine, sim_arm)
    finally:
        engine.close()


def _held_on_servo_fault(sim_arm: Any, tmp_path: Path, fault: str, motor: int, reads: int,
                         reason: str) -> tuple[Engine, Events]:
    """Drive the arm, inject `fault` on `motor`, and see it held within `reads` health reads (about one a
    second) plus slack, for `reason`. The caller closes the engine."""
    settings = sim_settings(tmp_path, model={"mode": "scripted"})
    events = Events()
    engine = _engine(settings, sim_arm, events)
    try:
        _start_and_drive(engine, sim_arm)
        t_fault = time.monotonic()
        sim_arm.set_fault(fault, motor_id=motor)
        _wait_held(engine, t_fault, reads + 2.0)
        assert engine.state == EngineState.ERROR
        assert reason in engine.snapshot().hold_reason
    except BaseException:
        sim_arm.clear_faults()
        engine.close()
        raise
    return engine, events


def test_health_reads_that_fail_hold(sim_arm: Any, tmp_path: Path) -> None:
    """Positions and goals still go through; only the temperature/load/voltage block goes unanswered."""
    retries = Settings().safety.health_read_retries
    engine, events = _held_on_servo_fault(sim_arm, tmp_path, "no_health_reply", 4, retries + 1,
                                          "servo health unreadable")
    try:
        assert events.has("unreadable 3 times in a row"), events.text()
        sim_arm.clear_faults()
        _recovers_only_on_start(engine, sim_arm)
    finally:
        sim_arm.clear_faults()
        engine.close()


def test_a_servo_that_flags_an_overload_holds(sim_arm: Any, tmp_path: Path) -> None:
    """The STS3215's overload protection cuts its torque and sets the flag; its load then reads 0 and its
    temperature stays normal, so only the flag in the status byte tells."""
    engine, events = _held_on_servo_fault(sim_arm, tmp_path, "overload", 2, 1, "shoulder_lift reports an overload")
    try:
        _no_goal_after_hold(sim_arm)
        # The flag stays until a power cycle: re-armed, the start is refused and says why.
        engine.submit(Rearm())
        engine.submit(Start(task="wave"))
        assert engine.state == EngineState.READY
        assert events.has("Start refused: servo health: shoulder_lift reports an overload"), events.text()
        sim_arm.clear_faults()
        _recovers_only_on_start_after_health(engine, sim_arm)
    finally:
        sim_arm.clear_faults()
        engine.close()


def _recovers_only_on_start_after_health(engine: Engine, sim: Any) -> None:
    """The next health reading (about a second) clears the refusal; then a start drives the arm again."""
    deadline = time.monotonic() + 3.0
    while engine.watchdog.health_problem and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.watchdog.health_problem, engine.watchdog.health_problem
    _recovers_only_on_start(engine, sim)


# ------------------------------------------------------------------------------------------ re-arm order


def test_rearm_after_torque_off_restores_the_goal_before_torque(sim_arm: Any, tmp_path: Path) -> None:
    """With the goal register kept while limp (a real STS3215), torque before goal would jump the arm."""
    sim_arm.set_limp_goal_kept(True)
    settings = sim_settings(tmp_path, model={"mode": "scripted"})
    events = Events()
    engine = _engine(settings, sim_arm, events)
    try:
        _start_and_drive(engine, sim_arm)
        engine.submit(EStop(torque_off=True))
        assert engine.state == EngineState.ESTOP
        time.sleep(0.3)
        before = sim_arm.state()[2]
        assert not before["torque"]
        fallen = (int(before["actual"]) + 500) % 4096  # the limp shoulder sags about 44 degrees
        sim_arm.move_by_hand(2, fallen)
        assert abs(sim_arm.state()[2]["goal"] - fallen) > 300, "the sim did not keep the pre-fall goal"
        sim_arm.clear_trace()
        engine.submit(Rearm())
        assert engine.state == EngineState.READY
        time.sleep(0.8)
        after = sim_arm.state()[2]
        assert after["torque"]
        assert abs(after["actual"] - fallen) < 20, f"the arm jumped from {fallen} to {after['actual']:.0f}"
        trace = sim_arm.trace()
        torque_on = [i for i, r in enumerate(trace) if r.direction == "rx" and r.register == "Torque_Enable"
                     and r.motor_id == 2 and r.values and r.values[0] == 1]
        goal = [i for i, r in enumerate(trace) if r.direction == "rx" and r.register == "Goal_Position"
                and r.motor_id == 2]
        assert torque_on and goal and goal[0] < torque_on[0], "torque came on before the goal was restored"
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------- heartbeat

HEARTBEAT_CONTROLLER = """
import dataclasses, sys, threading, time
from lepetpal_tui.settings import Settings
from lepetpal_tui.engine.launcher import EngineClient
from lepetpal_tui.wire import EStop, Heartbeat, Start, Stop

def main():
    s = Settings()
    s = dataclasses.replace(s, model=dataclasses.replace(s.model, mode="scripted"),
        logging=dataclasses.replace(s.logging, dir=sys.argv[2]),
        safety=dataclasses.replace(s.safety, ui_lost_disconnect_s=1.5))
    c = EngineClient.spawn(s, sim_port=sys.argv[1])
    ready = False
    while not ready:
        for b in c.poll(0.1):
            ready = ready or any("Policy ready" in e.message for e in b.events)

    def commands():
        for line in sys.stdin:
            c.send({"start": Start(task="keep moving"), "stop": Stop(), "estop": EStop()}[line.strip()])

    threading.Thread(target=commands, daemon=True).start()
    c.send(Start(task="keep moving"))
    print("RUNNING", c.pid, c.log_path, flush=True)
    while True:  # like `lepetpal run`: the main loop polls and sends the heartbeat
        c.poll(0.1)
        c.send(Heartbeat())

if __name__ == "__main__":
    main()
"""


def test_sigstopped_controller_holds_within_the_heartbeat_bound(sim_arm: Any, tmp_path: Path) -> None:
    """A frozen controller keeps its pipe open, so only the missing heartbeat can tell."""
    import os
    import signal
    import subprocess
    import sys

    from lepetpal_tui.engine.session_log import read_log

    bound = Settings().safety.ui_heartbeat_s
    script = tmp_path / "controller.py"
    script.write_text(HEARTBEAT_CONTROLLER)
    proc = subprocess.Popen([sys.executable, str(script), sim_arm.port, str(tmp_path / "logs")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("RUNNING"), line
        _, _, log_path = line.split()
        time.sleep(1.5)
        assert goal_writes(sim_arm.drain_trace()), "the arm was not moving before the freeze"
        t_stop = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(bound + 1.5)
        writes = goal_writes(sim_arm.drain_trace())
        assert writes, "no goal at all after the freeze: the test saw nothing"
        last = max(t for t, _, _ in writes)
        # The last heartbeat left at most 0.1 s before the freeze; the engine looks every tick.
        assert last <= t_stop + bound + 0.5, f"goal written {last - t_stop:.2f} s after the freeze"
        os.kill(proc.pid, signal.SIGCONT)  # the controller answers again: still held until start
        time.sleep(1.0)
        assert goal_writes(sim_arm.drain_trace()) == [], "moved again without an explicit start"
        proc.stdin.write("start\n")
        proc.stdin.flush()
        time.sleep(1.5)
        assert len(goal_writes(sim_arm.trace())) > 6 * 10, "did not move again after start"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(5)
    time.sleep(2.5)  # the engine holds and disconnects after ui_lost_disconnect_s
    recs = list(read_log(Path(log_path)))
    assert any("UI not responding" in r.get("message", "") for r in recs)
