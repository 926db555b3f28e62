"""The engine with a fake arm and fake policies: commands, safety, starvation, faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.engine.session_log import read_log, summarize
from lepetpal_tui.wire import EngineState, EStop, Rearm, RunMacro, SetDryRun, SetTask, Start, Stop

from .conftest import with_settings  # type: ignore[import-not-found]


def _run(engine: Engine, seconds: float, task: str = "pick up the ball") -> None:
    engine.submit(Start(task=task))
    time.sleep(seconds)


def test_runs_policy_and_writes_goals(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(0.5))
    assert engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 1.0)
    assert engine.state == EngineState.RUNNING
    assert len(arm.writes) > 20
    assert arm.pose[0] > 5.0
    goals = np.array([g for _, g in arm.writes])
    assert np.max(np.abs(np.diff(goals, axis=0))) <= engine.settings.arm.max_step_per_tick + 1e-9


def test_adversarial_jumps_are_clamped_and_ramped(fakes: ModuleType, make_engine: Any) -> None:
    rng = np.random.default_rng(0)

    def wild(obs: Any, i: int) -> Any:
        return rng.uniform(-1000, 1000, size=(50, 6))

    arm = fakes.FakeArm([30.0, -20.0, 10.0, 0.0, 5.0, 50.0])
    settings = with_settings(arm={"max_step_per_tick": 2.0})
    engine = make_engine(arm, fakes.FakePolicy(wild), settings)
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 1.5)
    goals = np.array([g for _, g in arm.writes])
    assert len(goals) > 20
    # First goal within one step of the measured pose: no jump at t = 0.
    assert np.max(np.abs(goals[0] - [30.0, -20.0, 10.0, 0.0, 5.0, 50.0])) <= 2.0 + 1e-9
    assert np.max(np.abs(np.diff(goals, axis=0))) <= 2.0 + 1e-9
    assert np.all(goals >= engine.filter.lo - 1e-9) and np.all(goals <= engine.filter.hi + 1e-9)
    assert engine.clamp_count > 0


def test_nan_chunk_holds_and_reports(fakes: ModuleType, make_engine: Any) -> None:
    def nan_second(obs: Any, i: int) -> Any:
        out = np.repeat(obs.joints[None, :], 20, axis=0) + 0.1
        if i >= 1:
            out[5, 2] = np.nan
        return out

    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.FakePolicy(nan_second, chunk_length=20))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.0)
    assert engine.wait_for((EngineState.ERROR,), 5.0)
    n = len(arm.writes)
    time.sleep(0.3)
    assert len(arm.writes) == n
    assert all(np.all(np.isfinite(g)) for _, g in arm.writes)
    assert any("non-finite" in e.message for b in engine.batches for e in b.events)


def test_estop_is_last_write_and_latched(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(1.0))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.5)
    assert arm.writes
    t_cmd = time.monotonic()
    engine.submit(EStop(sent_at=t_cmd))
    t_back = time.monotonic()
    n = len(arm.writes)
    time.sleep(0.3)
    assert len(arm.writes) == n, "a goal was written after the e-stop returned"
    assert not any(t >= t_cmd for t in arm.holds), "the e-stop path must not touch the bus"
    assert all(t <= t_back for t, _ in arm.writes)
    assert engine.state == EngineState.ESTOP and arm.torque
    engine.submit(Start(task="again"))
    time.sleep(0.2)
    assert engine.state == EngineState.ESTOP and len(arm.writes) == n
    engine.submit(Rearm())
    assert engine.state == EngineState.READY
    resets = engine.policy.resets
    _run(engine, 0.5)
    assert len(arm.writes) > n and engine.policy.resets == resets + 1


def test_estop_torque_off_and_rearm_restores_goal_first(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(1.0))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.3)
    engine.submit(EStop(torque_off=True))
    assert not arm.torque
    arm.pose = arm.pose - 30.0  # the arm fell
    n = len(arm.writes)
    engine.submit(Rearm())
    assert arm.torque
    assert np.allclose(arm.writes[n][1], arm.pose)  # goal = measured before torque came back


def test_dry_run_writes_nothing_but_reports_would_be_goals(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(1.0), with_settings(control={"dry_run": True}))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.8)
    assert engine.state == EngineState.DRY_RUN
    assert arm.writes == []
    ticks = [t for b in engine.batches for t in b.ticks] + list(engine.coalescer._ticks)
    would = [t for t in ticks if t.goal is not None]
    assert would and not any(t.written for t in ticks)
    # Going live ramps from the measured pose (which never moved) rather than the would-be goal.
    engine.submit(SetDryRun(on=False))
    time.sleep(0.3)
    assert engine.state == EngineState.RUNNING
    assert np.max(np.abs(arm.writes[0][1] - np.zeros(6))) <= engine.settings.arm.max_step_per_tick + 1e-9


def test_zero_starved_ticks_when_latency_is_half_a_chunk(fakes: ModuleType, make_engine: Any) -> None:
    settings = with_settings(control={"rate_hz": 50.0})
    policy = fakes.ramp_policy(0.05, chunk_length=20)
    policy.latency_s = 0.2  # 10 ticks = half a chunk
    engine = make_engine(fakes.FakeArm(), policy, settings)
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 3.0)
    assert policy.calls >= 6
    assert engine.starved_ticks == 0


def _slow_policy_run(fakes: ModuleType, make_engine: Any, when_slow: str) -> tuple[Engine, Any]:
    settings = with_settings(control={"rate_hz": 50.0, "chunk_threshold": 0.0, "when_inference_is_slow": when_slow})
    policy = fakes.ramp_policy(0.05, chunk_length=10)
    policy.latency_s = 0.3  # 15 ticks for a 10-tick chunk
    arm = fakes.FakeArm()
    engine = make_engine(arm, policy, settings)
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 2.0)
    return engine, arm


def test_slow_policy_starves_and_holds_when_set_to_hold(fakes: ModuleType, make_engine: Any) -> None:
    engine, _ = _slow_policy_run(fakes, make_engine, "hold")
    assert engine.starved_ticks > 10
    assert engine.state == EngineState.RUNNING


def test_slow_policy_plays_the_plan_slower_instead_of_stopping(fakes: ModuleType, make_engine: Any,
                                                              tmp_path: Path) -> None:
    engine, arm = _slow_policy_run(fakes, make_engine, "slow_down")
    assert engine.state == EngineState.RUNNING
    # Holding would starve ~a third of the ticks (see above); slowed, the plan lasts (a tick or two of
    # slack for a loaded 2-core machine).
    assert engine.starved_ticks <= 2
    engine.flush_telemetry()
    speeds = [t.speed for b in engine.batches for t in b.ticks if t.goal is not None]  # type: ignore[attr-defined]
    assert min(speeds) < 0.8 and max(speeds) <= 1.0 and min(speeds) >= engine.settings.control.min_speed
    # The safety filter's per-tick limit still holds on every written goal.
    goals = np.array([g for _, g in arm.writes])
    assert np.max(np.abs(np.diff(goals, axis=0))) <= engine.settings.arm.max_step_per_tick + 1e-9
    engine.close(timeout=5.0)
    summary = summarize(tmp_path / "session-0.jsonl")
    assert summary.speed_min is not None and summary.speed_min < 0.8
    assert any("playback speed" in line and "min" in line for line in summary.lines())


def test_set_task_applies_to_next_chunk(fakes: ModuleType, make_engine: Any) -> None:
    policy = fakes.ramp_policy(0.1, chunk_length=10)
    engine = make_engine(fakes.FakeArm(), policy)
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.3, task="first")
    engine.submit(SetTask(task="second"))
    time.sleep(0.6)
    assert policy.tasks[0] == "first" and policy.tasks[-1] == "second"


def test_bus_errors_hold_after_retries(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(1.0))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.3)
    arm.fail_reads = True
    assert engine.wait_for((EngineState.ERROR,), 2.0)
    assert "bus errors" in engine.snapshot().hold_reason


def test_health_guard_holds(fakes: ModuleType, make_engine: Any) -> None:
    from lepetpal_tui.wire import ServoHealth

    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(0.2))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.2)
    arm.health = (ServoHealth("elbow_flex", 80.0, 10.0, 12.0),)
    assert engine.wait_for((EngineState.ERROR,), 3.0)
    assert "elbow_flex at 80" in engine.snapshot().hold_reason


def test_macros_refused_far_from_start_then_home_runs(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm([0.0, 60.0, 0.0, 0.0, 0.0, 0.0])
    engine = make_engine(arm, fakes.ramp_policy(0.0))
    engine.wait_for((EngineState.READY,), 2.0)
    time.sleep(0.1)
    engine.submit(RunMacro(name="throw"))
    assert engine.state == EngineState.READY and arm.writes == []
    engine.submit(RunMacro(name="home"))
    assert engine.state == EngineState.MACRO
    assert engine.wait_for((EngineState.READY,), 5.0)
    assert np.allclose(arm.pose, 0.0)
    goals = np.array([g for _, g in arm.writes])
    assert np.max(np.abs(np.diff(goals, axis=0))) <= 3.0 + 1e-9


def test_ui_lost_holds_then_disconnects(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    settings = with_settings(safety={"ui_lost_disconnect_s": 0.3, "ui_lost_torque_off": True})
    engine = make_engine(arm, fakes.ramp_policy(1.0), settings)
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.3)
    engine.ui_lost()
    n = len(arm.writes)
    assert engine.state == EngineState.ERROR
    assert engine.join(3.0)
    assert len(arm.writes) == n
    assert arm.disconnected_torque_off is True
    assert engine.state == EngineState.DISCONNECTED


def test_session_log_has_every_tick_and_summary(fakes: ModuleType, make_engine: Any, tmp_path: Path) -> None:
    engine = make_engine(fakes.FakeArm(), fakes.ramp_policy(0.3))
    engine.wait_for((EngineState.READY,), 2.0)
    _run(engine, 0.5)
    engine.submit(EStop())
    engine.close()
    assert engine.log is not None
    recs = list(read_log(engine.log.path))
    assert recs[0]["type"] == "header" and "settings" in recs[0] and recs[0]["lerobot"]
    ticks = [r for r in recs if r["type"] == "tick"]
    assert len(ticks) == engine.tick_count
    s = summarize(engine.log.path)
    assert s.ticks == engine.tick_count and s.estops == 1 and s.ended_cleanly and s.chunks >= 1
    assert s.tick_period_p50_s is not None and abs(s.tick_period_p50_s - 1 / 30) < 0.005


def test_estop_while_connecting_is_latched(fakes: ModuleType, tmp_path: Path) -> None:
    import threading

    from lepetpal_tui.settings import Settings

    gate = threading.Event()
    arm = fakes.FakeArm()
    real_connect = arm.connect

    def slow_connect() -> None:
        gate.wait(5.0)
        real_connect()

    arm.connect = slow_connect
    engine = Engine(Settings(), arm_factory=lambda: arm, policy_factory=fakes.policy_factory(fakes.ramp_policy(1.0)))
    engine.start()
    assert engine.wait_for((EngineState.CONNECTING,), 2.0)
    engine.submit(EStop())
    assert engine.state == EngineState.ESTOP
    gate.set()
    time.sleep(0.3)
    assert engine.state == EngineState.ESTOP
    engine.submit(Start(task="x"))
    time.sleep(0.2)
    assert arm.writes == []
    engine.close()


def test_connect_failure_reports_and_finishes(fakes: ModuleType, tmp_path: Path) -> None:
    from lepetpal_tui.engine.session_log import SessionLog
    from lepetpal_tui.settings import Settings

    arm = fakes.FakeArm()

    def refuse() -> None:
        raise OSError("port /dev/ttyACM0 busy")

    arm.connect = refuse
    log = SessionLog(tmp_path / "s.jsonl", Settings())
    batches: list[Any] = []
    engine = Engine(Settings(), arm_factory=lambda: arm, policy_factory=fakes.policy_factory(fakes.FakePolicy()),
                    on_telemetry=batches.append, session_log=log)
    engine.start()
    assert engine.join(5.0)
    engine.flush_telemetry()
    assert engine.state == EngineState.ERROR
    events = [e for b in batches for e in b.events]
    assert any("Cannot connect" in e.message and "lepetpal ports" in e.fix for e in events)
    assert summarize(tmp_path / "s.jsonl").ended_cleanly


def test_a_connect_error_that_says_what_to_do_gets_no_generic_advice(fakes: ModuleType) -> None:
    """The arm adapter's errors carry their own fix; the engine's general one beside it only repeats or
    contradicts it (a calibration file problem followed by "check the USB cable")."""
    from lepetpal_tui.settings import Settings

    class Explained(Exception):
        says_what_to_do = True

    arm = fakes.FakeArm()

    def refuse() -> None:
        raise Explained("The calibration file in /x cannot be loaded. Run `lepetpal calibrate`.")

    arm.connect = refuse
    batches: list[Any] = []
    engine = Engine(Settings(), arm_factory=lambda: arm, policy_factory=fakes.policy_factory(fakes.FakePolicy()),
                    on_telemetry=batches.append)
    engine.start()
    assert engine.join(5.0)
    engine.flush_telemetry()
    failed = [e for b in batches for e in b.events if "Cannot connect" in e.message]
    assert failed and "lepetpal calibrate" in failed[0].message and failed[0].fix == ""


def _gated_connect(arm: Any) -> threading.Event:
    """Make `arm.connect` wait for the returned gate."""
    gate = threading.Event()
    real_connect = arm.connect

    def slow_connect() -> None:
        assert gate.wait(5.0), "the gate was never opened"
        real_connect()

    arm.connect = slow_connect
    return gate


def _noticed_factory(fakes: ModuleType) -> tuple[Any, threading.Event]:
    """A fake policy factory, and an event set once it is called."""
    called = threading.Event()
    inner = fakes.policy_factory(fakes.ramp_policy(1.0))

    def factory(on_status: Any, cancel: threading.Event) -> Any:
        called.set()
        return inner(on_status, cancel)

    return factory, called


def test_an_out_of_process_load_starts_while_the_arm_connects(fakes: ModuleType) -> None:
    """A factory marked loads_while_connecting is called before the arm has connected (its imports and
    weights overlap the connect); the policy is still installed only after the arm connected."""
    from lepetpal_tui.engine.facade import LOADS_WHILE_CONNECTING
    from lepetpal_tui.settings import Settings

    arm = fakes.FakeArm()
    gate = _gated_connect(arm)
    factory, called = _noticed_factory(fakes)
    setattr(factory, LOADS_WHILE_CONNECTING, True)
    engine = Engine(Settings(), arm_factory=lambda: arm, policy_factory=factory)
    engine.start()
    try:
        assert called.wait(2.0), "the load did not start while the arm was connecting"
        time.sleep(0.2)
        assert engine.state == EngineState.CONNECTING  # loaded, but no READY without an arm
        gate.set()
        assert engine.wait_for((EngineState.READY,), 5.0)
    finally:
        gate.set()
        engine.close()


def test_an_early_load_is_cancelled_when_the_arm_cannot_connect(fakes: ModuleType) -> None:
    from lepetpal_tui.engine.facade import LOADS_WHILE_CONNECTING
    from lepetpal_tui.settings import Settings

    arm = fakes.FakeArm()
    loading = threading.Event()
    cancelled = threading.Event()

    def refuse() -> None:
        assert loading.wait(5.0)
        raise OSError("port /dev/ttyACM0 busy")

    def factory(on_status: Any, cancel: threading.Event) -> Any:
        loading.set()
        if cancel.wait(5.0):
            cancelled.set()
        raise RuntimeError("policy loading cancelled")

    arm.connect = refuse
    setattr(factory, LOADS_WHILE_CONNECTING, True)
    engine = Engine(Settings(), arm_factory=lambda: arm, policy_factory=factory)
    engine.start()
    assert engine.join(5.0)
    assert cancelled.wait(2.0), "the load went on after the connect failed"
    assert engine.state == EngineState.ERROR and "arm connection failed" in engine.control.hold_reason


def test_an_in_process_load_waits_for_the_arm(fakes: ModuleType) -> None:
    """A factory without the mark (in-process: it would share the GIL with the bus handshake) is called
    only once the arm is connected."""
    from lepetpal_tui.settings import Settings

    arm = fakes.FakeArm()
    gate = _gated_connect(arm)
    factory, called = _noticed_factory(fakes)
    engine = Engine(Settings(), arm_factory=lambda: arm, policy_factory=factory)
    engine.start()
    try:
        assert not called.wait(0.3)
        gate.set()
        assert called.wait(2.0)
        assert engine.wait_for((EngineState.READY,), 5.0)
    finally:
        gate.set()
        engine.close()


def test_never_ready_without_a_policy(fakes: ModuleType) -> None:
    """LOADING until the policy is installed; a failed load holds in ERROR, never READY (start is refused)."""
    import threading

    from lepetpal_tui.settings import Settings

    gate = threading.Event()

    def failing(on_status: Any, cancel: threading.Event) -> Any:
        gate.wait(5.0)
        raise RuntimeError("no such checkpoint")

    engine = Engine(Settings(), arm_factory=fakes.FakeArm, policy_factory=failing)
    engine.start()
    try:
        assert engine.wait_for((EngineState.LOADING,), 2.0)
        gate.set()
        assert engine.wait_for((EngineState.ERROR,), 2.0)
        assert "failed to load" in engine.snapshot().hold_reason
        engine.submit(Start(task="wave"))
        engine.submit(Stop())
        assert engine.state == EngineState.ERROR
    finally:
        engine.close(timeout=5.0)
