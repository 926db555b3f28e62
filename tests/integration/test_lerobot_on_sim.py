"""LeRobot's unmodified SO101Follower drives the simulated arm: connect, observe, act, disconnect."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.settings import JOINT_NAMES
from lepetpal_tui.sim.process import SimArm

ROBOT_ID = "sim_test_arm"


def _write_default_calibration(calib_dir: Path) -> None:
    """What the arm adapter writes for the sim: offset 0, full range, so 2048 steps ~ 0 degrees."""
    calib = {
        name: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": 0, "range_max": 4095}
        for i, name in enumerate(JOINT_NAMES)
    }
    calib_dir.mkdir(parents=True, exist_ok=True)
    (calib_dir / f"{ROBOT_ID}.json").write_text(json.dumps(calib))


@pytest.fixture
def robot(sim_arm: SimArm, tmp_path: Path) -> Iterator[Any]:
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    calib_dir = tmp_path / "calibration"
    _write_default_calibration(calib_dir)
    r = SO101Follower(SO101FollowerConfig(port=sim_arm.port, id=ROBOT_ID, calibration_dir=calib_dir))
    # calibrate=False: with a mismatch LeRobot would call input(); the motors get the file's values instead.
    r.connect(calibrate=False)
    if not r.is_calibrated:
        r.bus.write_calibration(r.calibration)
    yield r
    if r.is_connected:
        r.disconnect()


def test_connect_configures_and_calibrates_the_motors(sim_arm: SimArm, robot: Any) -> None:
    assert robot.is_connected
    assert robot.is_calibrated
    state = sim_arm.state()
    assert all(s["torque"] for s in state.values())  # configure() leaves torque on
    assert all(s["return_delay"] == 0 and s["acceleration"] == 254 for s in state.values())
    assert all(s["min_limit"] == 0 and s["max_limit"] == 4095 and s["homing_offset"] == 0 for s in state.values())
    written = {(r.motor_id, r.register) for r in sim_arm.trace() if r.direction == "rx" and r.instruction == "WRITE"}
    assert {(6, "Max_Torque_Limit"), (1, "P_Coefficient"), (3, "Operating_Mode")} <= written


def test_observation_reads_mid_range_as_zero_degrees(robot: Any) -> None:
    obs = robot.get_observation()
    assert set(obs) == {f"{j}.pos" for j in JOINT_NAMES}
    for joint in JOINT_NAMES[:5]:
        assert obs[f"{joint}.pos"] == pytest.approx(0.0, abs=0.1)
    assert obs["gripper.pos"] == pytest.approx(50.0, abs=0.1)


def test_actions_arrive_at_the_goals_at_a_plausible_speed(sim_arm: SimArm, robot: Any) -> None:
    goal = {"shoulder_pan.pos": 45.0, "shoulder_lift.pos": -30.0, "elbow_flex.pos": 20.0,
            "wrist_flex.pos": 10.0, "wrist_roll.pos": -90.0, "gripper.pos": 80.0}
    sent = robot.send_action(goal)
    assert sent == goal
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 3.0:
        obs = robot.get_observation()
        samples.append((time.monotonic() - t0, obs))
        if all(abs(obs[k] - v) < 0.5 for k, v in goal.items()):
            break
        time.sleep(0.01)
    elapsed, final = samples[-1]
    for key, value in goal.items():
        assert final[key] == pytest.approx(value, abs=0.5), key
    # 90 degrees of wrist roll takes a real STS3215 a few tenths of a second, not an instant nor seconds.
    assert 0.15 < elapsed < 2.5
    early = next(o for t, o in samples if t > 0.05)
    assert abs(early["wrist_roll.pos"]) < 80.0
    # The sim saw the goals as raw steps: DEGREES mid (2047.5) + value * 4095 / 360.
    goals_on_bus = {r.motor_id: r.values[0] for r in sim_arm.trace()
                    if r.instruction == "SYNC_WRITE" and r.register == "Goal_Position"}
    assert goals_on_bus[1] == int(45.0 * 4095 / 360 + 2047.5)


def test_disconnect_turns_torque_off(sim_arm: SimArm, robot: Any) -> None:
    robot.send_action({"elbow_flex.pos": 15.0})
    time.sleep(0.5)
    sim_arm.clear_trace()
    robot.disconnect()
    state = sim_arm.state()
    assert not any(s["torque"] for s in state.values())
    torque_writes = [r for r in sim_arm.trace() if r.register == "Torque_Enable" and r.direction == "rx"]
    assert sorted(r.motor_id for r in torque_writes) == [1, 2, 3, 4, 5, 6]
    assert all(r.values == (0,) for r in torque_writes)
    # With torque off the joint stays where it was.
    assert state[3]["present"] == pytest.approx(2048 + 15.0 * 4095 / 360, abs=3)


def test_calibration_by_hand_with_lerobot_helpers(sim_arm: SimArm, tmp_path: Path) -> None:
    """set_half_turn_homings + manual moves, as LeRobot's calibration does, against the sim's frames."""
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    r = SO101Follower(SO101FollowerConfig(port=sim_arm.port, id="fresh", calibration_dir=tmp_path))
    r.connect(calibrate=False)
    try:
        r.bus.disable_torque()
        sim_arm.move_by_hand(1, 1500)
        offsets = r.bus.set_half_turn_homings()
        assert offsets["shoulder_pan"] == 1500 - 2047
        assert r.bus.sync_read("Present_Position", normalize=False)["shoulder_pan"] == 2047
        sim_arm.move_by_hand(1, 2000)  # 500 steps further by hand
        assert r.bus.sync_read("Present_Position", normalize=False)["shoulder_pan"] == 2547
    finally:
        r.disconnect()
