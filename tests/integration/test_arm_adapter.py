"""The arm adapter, the port doctor and calibration against the simulated SO-101 (real LeRobot bus code,
real pty, real Feetech packets)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepetpal_tui.arm.adapter import BUS_READ_WAIT_S, Arm, ArmError, ArmGlitch
from lepetpal_tui.arm.calibration import default_sim_calibration, load_calibration
from lepetpal_tui.settings import JOINT_NAMES, ArmSettings, SafetySettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_arm(sim_arm: Any, tmp_path: Path) -> Iterator[Callable[..., Arm]]:
    made: list[Arm] = []

    def make(is_sim: bool = True, **arm_kwargs: Any) -> Arm:
        settings = ArmSettings(calibration_dir=str(tmp_path / "calibration"), **arm_kwargs)
        arm = Arm(settings, sim_arm.port, SafetySettings(), is_sim=is_sim)
        made.append(arm)
        return arm

    yield make
    for arm in made:
        arm.disconnect()


def _wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_connect_read_write_reach_goals_and_disconnect_torque_off(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    arm.connect()
    assert arm.is_connected
    # The sim got a default calibration file of its own (never the real arm's file) and the motors hold it.
    assert arm.calibration_file.name == "lepetpal_so101_sim.json"
    cal = load_calibration(arm.calibration_file)
    assert cal == default_sim_calibration()
    state = sim_arm.state()
    assert [(state[i]["min_limit"], state[i]["max_limit"]) for i in range(1, 7)] == [
        (c.range_min, c.range_max) for c in cal.values()
    ]
    assert all(state[i]["torque"] for i in range(1, 7))

    pose = arm.read_joints()
    assert pose.shape == (6,) and pose.dtype == np.float64
    assert np.all(np.abs(pose[:5]) < 1.0)  # rest pose is the middle of the calibrated range

    sim_arm.clear_trace()
    arm.read_joints()
    received = [r for r in sim_arm.trace() if r.direction == "rx"]
    assert {r.instruction for r in received} == {"SYNC_READ"}  # one sync read, nothing else

    goals = np.array([20.0, -15.0, 30.0, 10.0, -45.0, 60.0])
    arm.write_goals(goals)
    assert _wait_until(lambda: bool(np.all(np.abs(arm.read_joints() - goals) < 1.0)))

    health = arm.read_health()
    assert [h.joint for h in health] == list(JOINT_NAMES)
    assert all(h.voltage_v == pytest.approx(12.0) and h.error_bits == 0 for h in health)
    assert all(20.0 <= h.temperature_c <= 60.0 for h in health)

    pose = arm.hold()
    assert np.allclose(pose, goals, atol=1.0)

    arm.disconnect(torque_off=True)
    assert not arm.is_connected
    assert not any(s["torque"] for s in sim_arm.state().values())
    arm.disconnect()  # twice is fine
    with pytest.raises(ArmError, match="not connected"):
        arm.read_joints()


def test_disconnect_can_keep_torque_on(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    arm.connect()
    arm.disconnect(torque_off=False)
    assert all(s["torque"] for s in sim_arm.state().values())


def test_set_torque_off_then_on_holds_where_the_arm_was_left(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    arm.connect()
    arm.set_torque(False)
    assert not any(s["torque"] for s in sim_arm.state().values())
    start = sim_arm.state()[2]["actual"]
    sim_arm.move_by_hand(2, int(start) + 300)
    arm.set_torque(True)
    time.sleep(0.3)
    assert sim_arm.state()[2]["actual"] == pytest.approx(start + 300, abs=3)  # no snap back


def test_non_finite_goals_are_refused_and_not_written(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    arm.connect()
    sim_arm.clear_trace()
    with pytest.raises(ArmError, match="finite"):
        arm.write_goals(np.array([0.0, np.nan, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ArmError, match="6 finite numbers"):
        arm.write_goals(np.zeros(5))
    assert not [r for r in sim_arm.trace() if r.instruction == "SYNC_WRITE"]


def test_normalized_units(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm(units="normalized")
    arm.connect()
    arm.write_goals(np.array([50.0, -50.0, 0.0, 0.0, 0.0, 50.0]))
    assert _wait_until(lambda: abs(arm.read_joints()[0] - 50.0) < 1.0)


FAULTS = [
    ("silent", None, None, "Nothing answers"),
    ("silent", 3, None, "Motors 3 (elbow_flex) do not answer"),
    ("overheat", 2, None, "2 (shoulder_lift) report overheating"),
    ("overload", 4, None, "4 (wrist_flex) report an overload"),
    ("voltage", None, None, "report an input-voltage error"),
    ("slow_reply", None, None, "LeRobot waits about 50 ms"),
    ("bad_checksum", None, None, "arrive corrupted"),
    ("unplug", None, None, "does not exist"),
    ("low_voltage", None, 3.5, "Supply voltage out of range: the servos measure 3.5 V"),
    ("low_voltage", 2, 4.2, "measure 4.2 V"),  # above the servo's own 4.0 V limit: only our check sees it
    ("wrong_model", 5, None, "5 (wrist_roll) report model numbers [2825]"),
    ("firmware", 6, 3, "different firmware versions"),
]


@pytest.mark.parametrize(("kind", "motor_id", "value", "expected"), FAULTS, ids=[f"{f[0]}-{f[1]}" for f in FAULTS])
def test_fault_gives_specific_message_and_retry_connects(
    sim_arm: Any, make_arm: Any, kind: str, motor_id: int | None, value: float | None, expected: str
) -> None:
    arm = make_arm()
    sim_arm.set_fault(kind, motor_id, value)
    with pytest.raises(ArmError) as info:
        arm.connect()
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)
    assert not arm.is_connected
    sim_arm.clear_faults()
    arm.connect()  # the failed attempt closed the port and dropped the lock
    assert arm.read_joints().shape == (6,)


def test_a_reply_lost_during_the_handshake_is_tried_again(sim_arm: Any, make_arm: Any) -> None:
    # LeRobot pings each servo once: before the retry, one lost reply failed the whole connect.
    arm = make_arm()
    sim_arm.set_fault("lost_reply", 3, 1)
    arm.connect()
    assert arm.is_connected and arm.read_joints().shape == (6,)
    # (a stall of this loaded machine could add a glitch of its own: at least one, not exactly one)
    assert arm.connect_glitches and "motor check failed" in arm.connect_glitches[0]
    pings = [r for r in sim_arm.trace() if r.direction == "rx" and r.instruction == "PING" and r.motor_id == 3]
    assert len(pings) >= 3  # LeRobot's lost one, the probe's, the second try's


def test_a_reply_lost_by_the_probe_too_gets_a_second_ping(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    sim_arm.set_fault("lost_reply", 3, 2)  # LeRobot's ping and the probe's first: a stall, not a cable
    arm.connect()
    assert arm.is_connected and arm.connect_glitches


def test_a_servo_that_misses_the_probe_too_is_named_not_retried(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    sim_arm.set_fault("lost_reply", 3, 3)  # LeRobot's ping and both of the probe's
    with pytest.raises(ArmError) as info:
        arm.connect()
    assert "Motors 3 (elbow_flex) do not answer" in str(info.value)
    assert not isinstance(info.value, ArmGlitch) and arm.connect_glitches == []
    assert not arm.is_connected
    arm.connect()  # the servo answers again: the port was left free
    assert arm.is_connected


def test_the_bus_client_sleeps_while_it_waits_for_a_reply(sim_arm: Any, make_arm: Any) -> None:
    """LeRobot's client polls a timeout-0 port in a loop; ours waits in select(), so the control thread may
    do its bus work at real-time priority without keeping the CPU from whatever delivers the reply."""
    arm = make_arm()
    assert not arm.bus_waits_block  # not connected
    arm.connect()
    assert arm.bus_waits_block and arm._robot.bus.port_handler.ser.timeout == BUS_READ_WAIT_S
    sim_arm.set_fault("lost_reply", 3, 1)  # the next read waits out the SDK's packet timeout, then retries
    cpu0, wall0 = time.thread_time(), time.monotonic()
    assert arm.read_joints().shape == (6,)
    cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
    assert wall > 0.01, "the lost reply was not waited for"
    assert cpu < 0.5 * wall, f"the wait kept the thread on the CPU ({cpu * 1e3:.1f} of {wall * 1e3:.1f} ms)"
    arm._robot.bus.port_handler.ser.timeout = 0  # a port opened again by LeRobot polls: seen at once
    assert not arm.bus_waits_block


def test_missing_calibration_file_on_a_real_arm(sim_arm: Any, make_arm: Any, tmp_path: Path) -> None:
    arm = make_arm(is_sim=False)
    with pytest.raises(ArmError) as info:
        arm.connect()
    msg = str(info.value)
    assert str(tmp_path / "calibration" / "lepetpal_so101.json") in msg
    assert "lepetpal calibrate" in msg
    assert not (tmp_path / "calibration" / "lepetpal_so101.json").exists()  # nothing invented for a real arm
    make_arm().connect()  # the port was left free


def test_corrupt_calibration_file_is_explained(make_arm: Any, tmp_path: Path) -> None:
    arm = make_arm(is_sim=False)
    arm.calibration_file.parent.mkdir(parents=True)
    arm.calibration_file.write_text("{not json")
    with pytest.raises(ArmError, match=r"cannot be read.*lepetpal calibrate"):
        arm.connect()


def test_second_adapter_on_the_same_port_is_told_it_is_busy(make_arm: Any) -> None:
    first, second = make_arm(), make_arm()
    first.connect()
    with pytest.raises(ArmError, match="in use"):
        second.connect()
    first.disconnect()
    second.connect()


def test_unplug_while_running_raises_arm_error_and_disconnect_is_quiet(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    arm.connect()
    sim_arm.set_fault("unplug")
    with pytest.raises(ArmError, match="disappeared"):
        arm.read_joints()
    with pytest.raises(ArmError):
        arm.write_goals(np.zeros(6))
    arm.disconnect()
    sim_arm.clear_faults()
    arm.connect()


def test_health_reports_servo_error_bits(sim_arm: Any, make_arm: Any) -> None:
    arm = make_arm()
    arm.connect()
    sim_arm.set_fault("overheat", 3, 80.0)
    health = arm.read_health()
    assert health[2].error_bits & 0x04 and health[2].temperature_c == pytest.approx(80.0)
    assert health[0].error_bits == 0


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lepetpal_tui.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL,
    )


def test_ports_command_identifies_the_simulated_arm(sim_arm: Any) -> None:
    out = _cli("ports", "--json", sim_arm.port)
    assert out.returncode == 0, out.stderr
    rows = {r["device"]: r for r in json.loads(out.stdout)}
    sim = rows[sim_arm.port]
    assert sim["is_so101"] and sim["is_sim"]
    assert sim["motor_ids"] == [1, 2, 3, 4, 5, 6]
    assert sim["model_numbers"] == [777] * 6
    assert sim["voltage_v"] == pytest.approx(12.0)

    table = _cli("ports", sim_arm.port)
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(sim_arm.port))
    assert "SO-101 (simulated)" in line and "1,2,3,4,5,6" in line


def test_ports_command_explains_a_silent_bus(sim_arm: Any) -> None:
    sim_arm.set_fault("silent")
    out = _cli("ports", "--json", sim_arm.port)
    row = next(r for r in json.loads(out.stdout) if r["device"] == sim_arm.port)
    assert not row["is_so101"] and "nothing answered" in row["note"]


def test_calibrate_command_records_ranges_moved_by_hand(sim_arm: Any, tmp_path: Path) -> None:
    out_file = tmp_path / "cal.json"
    done = threading.Event()
    deltas = {i: (250 + 10 * i, 350 + 10 * i) for i in range(1, 7)}

    def move_by_hand() -> None:
        # Wait until calibrate has centred the joints (homing offsets written), then sweep each joint.
        if not _wait_until(lambda: all(s["homing_offset"] != 0 for s in sim_arm.state().values()), 60):
            return
        start = {i: int(s["actual"]) for i, s in sim_arm.state().items()}
        for i, (down, up) in deltas.items():
            for target in (start[i] - down, start[i] + up, start[i]):
                sim_arm.move_by_hand(i, target)
                time.sleep(0.05)
        done.set()

    mover = threading.Thread(target=move_by_hand, daemon=True)
    mover.start()
    result = _cli("calibrate", "--port", sim_arm.port, "--seconds", "6", "--output", str(out_file))
    mover.join(10)
    assert result.returncode == 0, result.stderr
    assert done.is_set(), "the recording ended before the joints were moved"
    assert "Calibration saved to" in result.stdout

    saved = json.loads(out_file.read_text())
    assert list(saved) == list(JOINT_NAMES)
    for i, joint in enumerate(JOINT_NAMES, start=1):
        entry = saved[joint]
        assert entry["id"] == i and entry["drive_mode"] == 0
        if joint == "wrist_roll":
            assert (entry["range_min"], entry["range_max"]) == (0, 4095)
        else:  # the pose at Enter reads 2047; the sweep went `down` below and `up` above it
            assert entry["range_min"] == 2047 - deltas[i][0]
            assert entry["range_max"] == 2047 + deltas[i][1]
    state = sim_arm.state()
    assert state[1]["min_limit"] == saved["shoulder_pan"]["range_min"]  # also written to the motors
    assert not any(s["torque"] for s in state.values())

    # LeRobot reads the file we wrote.
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    robot = SO101Follower(SO101FollowerConfig(port=sim_arm.port, id="cal", calibration_dir=tmp_path))
    assert robot.calibration["gripper"].range_max == 2047 + deltas[6][1]


def test_calibrate_command_fails_clearly_when_nothing_moves(sim_arm: Any, tmp_path: Path) -> None:
    out_file = tmp_path / "cal.json"
    result = _cli("calibrate", "--port", sim_arm.port, "--seconds", "0.5", "--output", str(out_file))
    assert result.returncode == 1
    assert "did not move" in result.stderr and "Traceback" not in result.stderr
    assert not out_file.exists()


def test_calibrate_command_needs_seconds_without_a_terminal(sim_arm: Any) -> None:
    result = _cli("calibrate", "--port", sim_arm.port)
    assert result.returncode == 2
    assert "--seconds" in result.stderr
