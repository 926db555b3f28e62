"""Faults that used to let the arm move: a servo's own fault flags, a start on bad health, dry-run during a
macro, a dry tick racing the switch to live, health checks skipped by overrunning ticks, and loops that a
bug would have ended without a word."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.engine.guarded_arm import GuardedArm
from lepetpal_tui.engine.safety import health_problem
from lepetpal_tui.feetech.protocol import ErrorBit
from lepetpal_tui.settings import JOINT_NAMES, SafetySettings, Settings
from lepetpal_tui.wire import EngineState, EventKind, RunMacro, ServoHealth, SetDryRun, Start

from .conftest import with_settings  # type: ignore[import-not-found]


def _health(joint: str = "shoulder_lift", *, temperature: float = 30.0, error_bits: int = 0) -> tuple[ServoHealth, ...]:
    return tuple(ServoHealth(j, temperature if j == joint else 30.0, 5.0, 12.0, error_bits if j == joint else 0)
                 for j in JOINT_NAMES)


def _events(engine: Engine) -> str:
    batches = list(engine.batches)  # type: ignore[attr-defined]
    return "\n".join(f"{e.kind.value}: {e.message} | {e.fix}" for b in batches for e in b.events)


def _wait_event(engine: Engine, text: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while text not in _events(engine):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(("bit", "words"), [
    (ErrorBit.OVERLOAD, "shoulder_lift reports an overload"),
    (ErrorBit.VOLTAGE, "shoulder_lift reports an input-voltage error"),
    (ErrorBit.OVERHEAT, "shoulder_lift reports overheating"),
    (ErrorBit.OVERCURRENT, "shoulder_lift reports an over-current"),
])
def test_a_servo_fault_flag_is_a_health_problem(bit: ErrorBit, words: str) -> None:
    # Load 0 and a normal temperature: what an overloaded STS3215 reads once its protection cut the torque.
    problem = health_problem(_health(error_bits=int(bit)), SafetySettings())
    assert words in problem
    assert health_problem(_health(), SafetySettings()) == ""


def test_the_angle_flag_alone_is_not_a_health_problem() -> None:
    """The servo raises it for a goal beyond its calibrated range, which it clamps itself."""
    assert health_problem(_health(error_bits=int(ErrorBit.ANGLE)), SafetySettings()) == ""


def _running(fakes: ModuleType, make_engine: Any) -> tuple[Engine, Any]:
    """An engine whose policy drives a fake arm."""
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(0.2))
    assert engine.wait_for((EngineState.READY,), 2.0)
    engine.submit(Start(task="wave"))
    assert engine.state == EngineState.RUNNING
    return engine, arm


def test_a_running_arm_holds_when_a_servo_flags_an_overload(fakes: ModuleType, make_engine: Any) -> None:
    engine, arm = _running(fakes, make_engine)
    arm.health = _health(error_bits=int(ErrorBit.OVERLOAD))
    assert engine.wait_for((EngineState.ERROR,), 3.0), engine.snapshot()
    assert "reports an overload" in engine.snapshot().hold_reason


def test_start_and_macros_are_refused_while_a_servo_is_too_hot(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm()
    engine = make_engine(arm, fakes.ramp_policy(0.2))
    assert engine.wait_for((EngineState.READY,), 2.0)
    arm.health = _health("elbow_flex", temperature=80.0)
    # The health check runs about once a second; READY does not halt, but it is remembered.
    deadline = time.monotonic() + 3.0
    while not engine.watchdog.health_problem and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "elbow_flex at 80" in engine.watchdog.health_problem
    engine.submit(Start(task="wave"))
    engine.submit(RunMacro(name="home"))
    assert engine.state == EngineState.READY
    assert arm.writes == []
    assert _wait_event(engine, "Start refused: servo health: elbow_flex at 80")
    assert _wait_event(engine, 'Macro "home" refused: servo health: elbow_flex at 80')
    # Cooled down: the next reading clears it, and the same start is accepted.
    arm.health = _health()
    deadline = time.monotonic() + 3.0
    while engine.watchdog.health_problem and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.submit(Start(task="wave"))
    assert engine.state == EngineState.RUNNING


def test_dry_run_on_during_a_macro_stops_its_goal_writes(fakes: ModuleType, make_engine: Any) -> None:
    arm = fakes.FakeArm([0.0, 20.0, 0.0, 0.0, 0.0, 0.0])  # near home: the macro is allowed, and takes a while
    engine = make_engine(arm, fakes.ramp_policy(0.0))
    assert engine.wait_for((EngineState.READY,), 2.0)
    engine.submit(RunMacro(name="home"))
    assert engine.state == EngineState.MACRO
    time.sleep(0.1)
    engine.submit(SetDryRun(on=True))
    assert engine.state == EngineState.READY and engine.snapshot().dry_run
    time.sleep(0.05)  # at most a write already in flight
    with arm.lock:
        written = len(arm.writes)
    time.sleep(0.5)
    assert len(arm.writes) == written, "the macro went on writing goals in dry-run"
    assert _wait_event(engine, "the macro stopped")


def _hand_driven(settings: Settings, fakes: ModuleType) -> tuple[Engine, Any]:
    """An engine whose threads are not started: ticks run by hand, in a chosen interleaving."""
    arm = fakes.FakeArm()
    engine = Engine(settings, arm_factory=lambda: arm, policy_factory=fakes.policy_factory(fakes.FakePolicy()))
    c = engine.control
    c.arm = GuardedArm(arm)
    c.measured = arm.read_joints()
    c.prev_goal = c.measured.copy()
    c.measured_tick = 0
    c.policy_ready = True
    c.set_state(EngineState.READY)
    return engine, arm


def test_a_dry_tick_racing_the_switch_to_live_does_not_skip_the_ramp(fakes: ModuleType) -> None:
    engine, arm = _hand_driven(with_settings(control={"dry_run": True}), fakes)
    c, actuator = engine.control, engine.actuator
    engine.submit(Start(task="reach"))
    assert c.state == EngineState.DRY_RUN
    k = c.measured_tick + 1
    plan = np.zeros((50, 6))
    plan[:, 0] = np.arange(1, 51) * 3.0  # away from the arm at max_step_per_tick a tick
    c.queue.merge(plan, k - 1, 0)
    c.awaiting_first_chunk = False
    for _ in range(30):  # the would-be goals walk to 90 degrees; the arm stays at 0
        actuator.tick(k, 0.0, 1 / 30)
        k += 1
    assert arm.writes == [] and c.prev_goal is not None and c.prev_goal[0] == pytest.approx(90.0)

    apply = actuator.filter.apply

    def apply_then_go_live(proposed: Any, previous: Any) -> Any:
        result = apply(proposed, previous)
        engine.submit(SetDryRun(on=False))  # the operator's key, inside this dry tick
        return result

    actuator.filter.apply = apply_then_go_live  # type: ignore[method-assign]
    actuator.tick(k, 0.0, 1 / 30)
    actuator.filter.apply = apply  # type: ignore[method-assign]
    assert c.state == EngineState.RUNNING
    actuator.tick(k + 1, 0.0, 1 / 30)
    first_live = arm.writes[0][1]
    assert abs(first_live[0] - 0.0) <= c.settings.arm.max_step_per_tick + 1e-9, first_live


def test_health_is_checked_when_every_tick_overruns(fakes: ModuleType, make_engine: Any) -> None:
    """Ticks of ~5 periods each skip slot numbers; the check goes by the clock, so it still runs."""
    class SlowArm(fakes.FakeArm):  # type: ignore[name-defined, misc]
        def read_joints(self) -> Any:
            time.sleep(5.0 / 30)
            return super().read_joints()

    arm = SlowArm()
    engine = make_engine(arm, fakes.ramp_policy(0.2))
    assert engine.wait_for((EngineState.READY,), 3.0)
    engine.submit(Start(task="wave"))
    arm.health = _health("elbow_flex", temperature=80.0)
    assert engine.wait_for((EngineState.ERROR,), 6.0), engine.snapshot()
    assert "elbow_flex at 80" in engine.snapshot().hold_reason
    assert engine.control.counters.overruns > 0


def test_a_bug_in_the_inference_loop_holds_and_the_loop_lives_on(fakes: ModuleType, make_engine: Any) -> None:
    calls = {"n": 0}

    def make(obs: Any, i: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return [[0.0] * 6, [0.0] * 5]  # ragged: the merge's array conversion raises
        return np.repeat(obs.joints[None, :], 50, axis=0)

    arm = fakes.FakeArm()
    policy = fakes.FakePolicy(make)
    policy.infer = _unconverted(policy)  # hand the ragged list to the engine as it came
    engine = make_engine(arm, policy)
    assert engine.wait_for((EngineState.READY,), 2.0)
    engine.submit(Start(task="wave"))
    assert engine.wait_for((EngineState.ERROR,), 3.0), engine.snapshot()
    assert _wait_event(engine, f"{EventKind.INTERNAL.value}: Inference loop error")
    from lepetpal_tui.wire import Rearm

    engine.submit(Rearm())
    engine.submit(Start(task="wave"))
    assert engine.state == EngineState.RUNNING
    deadline = time.monotonic() + 3.0
    while engine.chunk_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.chunk_count > 0, "the inference thread died with the bug"


def _unconverted(policy: Any) -> Any:
    from lepetpal_tui.wire import ActionChunk, InferenceTiming

    def infer(obs: Any) -> ActionChunk:
        out = policy.make(obs, policy.calls)
        policy.calls += 1
        return ActionChunk(out, InferenceTiming(model_s=0.0), obs.task, obs.timestamp)

    return infer


def test_a_command_that_raises_holds_and_says_so(fakes: ModuleType, make_engine: Any) -> None:
    engine, _ = _running(fakes, make_engine)
    engine.command_failed(Start(task="wave"), RuntimeError("boom"))
    assert engine.state == EngineState.ERROR
    assert _wait_event(engine, "Command Start failed: RuntimeError('boom')")
    assert "internal error applying Start" in engine.snapshot().hold_reason
