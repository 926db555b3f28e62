"""The simulated servo's model: frames, limits, motion, load and temperature (in-process, simulated time)."""

from __future__ import annotations

from lepetpal_tui.sim.servo import MAX_SPEED, SimServo


def _goal(servo: SimServo, goal: int) -> None:
    servo.write(42, (abs(goal) | (0x8000 if goal < 0 else 0)).to_bytes(2, "little"))


def _torque(servo: SimServo, on: bool) -> None:
    servo.write(40, bytes((int(on),)))


def test_torque_off_ignores_goal_and_holds_goal_on_present() -> None:
    s = SimServo(1, now=0.0)
    _goal(s, 3000)
    s.advance(1.0)
    assert s.get("Present_Position") == 2048
    assert s.get("Goal_Position") == 2048  # enabling torque now holds the pose, no jump
    _torque(s, True)
    s.advance(2.0)
    assert s.get("Present_Position") == 2048


def test_moves_toward_goal_at_a_plausible_speed_and_settles() -> None:
    s = SimServo(1, now=0.0)
    _torque(s, True)
    _goal(s, 3072)  # +90 degrees
    s.advance(0.1)
    moved = s.get("Present_Position") - 2048
    assert 0 < moved <= MAX_SPEED * 0.1 + 1
    assert s.get("Moving") == 1
    assert s.get("Present_Velocity") > 0
    s.advance(1.5)
    assert s.get("Present_Position") == 3072
    assert s.get("Moving") == 0


def test_homing_offset_shifts_present_and_goal_frames() -> None:
    s = SimServo(1, now=0.0, actual=2548.0)
    s.write(31, (500).to_bytes(2, "little"))
    assert s.get("Present_Position") == 2048  # Present = Actual - Homing_Offset
    s.write(31, (0x800 | 500).to_bytes(2, "little"))  # -500, sign bit 11
    assert s.get("Homing_Offset") == -500
    assert s.get("Present_Position") == 3048
    _torque(s, True)
    _goal(s, 3148)
    s.advance(1.0)
    assert round(s.actual) == 2648


def test_torque_enable_128_recentres_the_present_position() -> None:
    s = SimServo(1, now=0.0, actual=1000.0)
    s.write(40, bytes((128,)))
    assert s.get("Present_Position") == 2048
    assert s.get("Torque_Enable") == 0


def test_goal_beyond_limit_stops_at_limit_with_high_load_and_heat() -> None:
    s = SimServo(1, now=0.0)
    s.write(11, (2500).to_bytes(2, "little"))  # Max_Position_Limit
    _torque(s, True)
    _goal(s, 2300)
    s.advance(1.0)
    free_load = abs(s.get("Present_Load"))
    _goal(s, 3500)
    s.advance(2.0)
    assert s.get("Present_Position") == 2500
    pushing = abs(s.get("Present_Load"))
    assert pushing > free_load + 300
    assert s.get("Present_Current") > 50
    t0 = s.reported_temperature()
    s.advance(300.0)
    assert s.get("Present_Temperature") > t0 + 5


def test_load_capped_by_torque_limit() -> None:
    s = SimServo(6, now=0.0)
    s.write(16, (500).to_bytes(2, "little"))  # Max_Torque_Limit, as LeRobot sets on the gripper
    s.write(11, (2100).to_bytes(2, "little"))
    _torque(s, True)
    _goal(s, 4000)
    s.advance(1.0)
    assert s.get("Present_Load") == 500


def test_move_by_hand_with_torque_on_is_pulled_back() -> None:
    s = SimServo(1, now=0.0)
    _torque(s, True)
    s.advance(0.1)
    s.move_by_hand(2400)
    assert s.get("Present_Position") == 2400
    s.advance(1.5)
    assert s.get("Present_Position") == 2048


def test_voltage_register_in_tenths_of_a_volt() -> None:
    s = SimServo(1, now=0.0)
    assert s.get("Present_Voltage") == 120
    s.faults.voltage_v = 6.5
    s.advance(0.01)
    assert s.get("Present_Voltage") == 65


def test_limp_goal_kept_drives_to_the_stale_goal_when_torque_returns() -> None:
    """A real STS3215 keeps its goal register while limp: torque before goal makes the arm jump."""
    s = SimServo(1, now=0.0)
    s.limp_goal_kept = True
    _goal(s, 3000)  # written while limp
    s.move_by_hand(1500)  # the limp arm sags
    s.advance(1.0)
    assert s.get("Present_Position") == 1500 and s.get("Goal_Position") == 3000
    _torque(s, True)
    s.advance(2.0)
    assert s.get("Present_Position") == 3000  # the jump a wrong re-arm order causes
    # Goal first, then torque: no jump.
    _torque(s, False)
    s.move_by_hand(1200)
    _goal(s, 1200)
    _torque(s, True)
    s.advance(3.0)
    assert s.get("Present_Position") == 1200
