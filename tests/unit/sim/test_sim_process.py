"""The simulated arm in its own process, seen through a real serial client (pyserial, scservo_sdk, LeRobot's bus)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.feetech.protocol import Instruction, build_packet
from lepetpal_tui.sim.process import SimArm, SimError

NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def _bus(port: str) -> Any:
    from lerobot.motors import Motor, MotorNormMode
    from lerobot.motors.feetech import FeetechMotorsBus

    return FeetechMotorsBus(port, {n: Motor(i + 1, "sts3215", MotorNormMode.DEGREES) for i, n in enumerate(NAMES)})


@pytest.fixture
def bus(sim_arm: SimArm) -> Iterator[Any]:
    b = _bus(sim_arm.port)
    b.connect()
    yield b
    if b.port_handler.is_open:
        b.port_handler.closePort()


def _read_reply(ser: Any, n: int, timeout: float = 1.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += ser.read(n - len(out))
    return out


def test_port_is_a_symlink_to_a_pty_and_replies_without_echo(sim_arm: SimArm) -> None:
    import serial

    assert os.path.islink(sim_arm.port)
    assert os.path.realpath(sim_arm.port) == sim_arm.pty_path
    with serial.Serial(sim_arm.port, 1_000_000, timeout=0) as ser:
        ser.write(build_packet(2, Instruction.PING))
        reply = _read_reply(ser, 6)
        time.sleep(0.05)
        extra = ser.read(100)
    assert reply == build_packet(2, 0)  # status: FF FF 02 02 00 CHK, and not our own bytes back
    assert extra == b""


def test_broadcast_ping_finds_six_sts3215(bus: Any) -> None:
    assert bus.broadcast_ping() == {i: 777 for i in range(1, 7)}


def test_sync_read_answers_in_request_order(sim_arm: SimArm, bus: Any) -> None:
    import scservo_sdk as scs

    sim_arm.move_by_hand(3, 1111)
    reader = scs.GroupSyncRead(bus.port_handler, bus.packet_handler, 56, 2)
    for motor_id in (5, 3, 1):
        reader.addParam(motor_id)
    sim_arm.clear_trace()
    assert reader.txRxPacket() == scs.COMM_SUCCESS
    assert [reader.getData(i, 56, 2) for i in (5, 3, 1)] == [2048, 1111, 2048]
    assert [r.motor_id for r in sim_arm.trace() if r.direction == "tx"] == [5, 3, 1]


def test_write_and_read_back_through_lerobot(sim_arm: SimArm, bus: Any) -> None:
    bus.write("Acceleration", "wrist_flex", 200)
    assert bus.read("Acceleration", "wrist_flex") == 200
    bus.write("Homing_Offset", "wrist_flex", -300, normalize=False)
    assert bus.read("Homing_Offset", "wrist_flex", normalize=False) == -300
    assert bus.read("Present_Position", "wrist_flex", normalize=False) == 2348
    assert sim_arm.state()[4]["homing_offset"] == -300


def test_move_by_hand_shows_on_the_bus(sim_arm: SimArm, bus: Any) -> None:
    sim_arm.move_by_hand(2, 3000)
    assert bus.sync_read("Present_Position", normalize=False)["shoulder_lift"] == 3000


@pytest.mark.parametrize(
    ("kind", "exc", "message"),
    [
        ("silent", ConnectionError, "There is no status packet"),
        ("slow_reply", ConnectionError, "There is no status packet"),
        ("bad_checksum", ConnectionError, "Incorrect status packet"),
        ("overheat", RuntimeError, "Overheat error"),
        ("overload", RuntimeError, "Overload error"),
        ("voltage", RuntimeError, "Input voltage error"),
    ],
)
def test_faults_surface_as_lerobot_errors(sim_arm: SimArm, bus: Any, kind: str, exc: type, message: str) -> None:
    assert bus.read("Present_Temperature", "elbow_flex") == 25
    sim_arm.set_fault(kind, 3)
    with pytest.raises(exc, match=message):
        bus.read("Present_Temperature", "elbow_flex")
    assert bus.read("Present_Temperature", "wrist_flex") == 25  # the other servos are fine
    assert kind in sim_arm.state()[3]["faults"]
    sim_arm.clear_faults()
    time.sleep(0.15)  # let a late (slow_reply) answer arrive, then drop it
    bus.port_handler.ser.reset_input_buffer()
    assert bus.read("Present_Temperature", "elbow_flex") == 25


def test_overload_drops_torque(sim_arm: SimArm, bus: Any) -> None:
    bus.enable_torque()
    sim_arm.set_fault("overload", 2)
    state = sim_arm.state()
    assert not state[2]["torque"]
    assert state[1]["torque"]


def test_low_voltage_reading(sim_arm: SimArm, bus: Any) -> None:
    sim_arm.set_fault("low_voltage", 1, 6.2)
    assert bus.read("Present_Voltage", "shoulder_pan") == 62
    assert bus.read("Present_Voltage", "gripper") == 120


@pytest.mark.parametrize(("kind", "message"), [
    ("wrong_model", "incorrect model numbers"),
    ("firmware", "different firmware versions"),
    ("silent", "Missing motor IDs"),
])
def test_handshake_faults_fail_lerobot_connect(sim_arm: SimArm, kind: str, message: str) -> None:
    sim_arm.set_fault(kind, 4)
    b = _bus(sim_arm.port)
    with pytest.raises(RuntimeError, match=message):
        b.connect()
    b.port_handler.closePort()


def test_unplug_removes_port_and_clear_faults_plugs_back(sim_arm: SimArm, bus: Any) -> None:
    import termios

    import serial

    sim_arm.set_fault("unplug")
    assert not os.path.lexists(sim_arm.port)
    # What a pulled USB cable gives too: the exception type depends on where pyserial notices.
    with pytest.raises((OSError, serial.SerialException, termios.error)):
        bus.read("Present_Position", "gripper")
    bus.port_handler.closePort()
    with pytest.raises(ConnectionError):
        _bus(sim_arm.port).connect()
    sim_arm.clear_faults()
    assert os.path.realpath(sim_arm.port) == sim_arm.pty_path
    again = _bus(sim_arm.port)
    again.connect()
    assert again.read("Present_Position", "gripper", normalize=False) == 2048
    again.port_handler.closePort()


def test_unknown_fault_kind_is_a_clear_error(sim_arm: SimArm) -> None:
    with pytest.raises(ValueError, match="use one of: silent, overheat"):
        sim_arm.set_fault("gremlins")


def test_wire_time_delays_replies_like_a_1mbps_bus() -> None:
    import scservo_sdk as scs

    with SimArm.start(wire_time=True) as sim:
        b = _bus(sim.port)
        b.connect()
        b.write("Return_Delay_Time", "gripper", 0)
        reader = scs.GroupSyncRead(b.port_handler, b.packet_handler, 56, 2)
        for i in range(1, 7):
            reader.addParam(i)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            assert reader.txRxPacket() == scs.COMM_SUCCESS
            times.append(time.perf_counter() - t0)
        b.port_handler.closePort()
    # 14-byte request + 6 x 8-byte replies at 10 us a byte is 0.62 ms: never faster than that.
    assert sorted(times)[len(times) // 2] >= 0.0006


def test_start_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "not-a-link"
    target.write_text("keep me")
    with pytest.raises(SimError, match="not a symlink"):
        SimArm.start(link_path=str(target))
    assert target.read_text() == "keep me"


def test_stop_removes_link_and_ends_process(tmp_path: Path) -> None:
    link = tmp_path / "arm"
    sim = SimArm.start(link_path=str(link))
    assert link.is_symlink()
    sim.stop()
    assert not sim.is_alive
    assert not os.path.lexists(link)
    sim.stop()  # twice is fine
    with pytest.raises(SimError, match="stopped"):
        sim.state()


@pytest.mark.parametrize("cut_short", ["lock kept", "reply left unread"])
def test_stop_ends_the_process_after_a_call_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cut_short: str) -> None:
    """A signal inside a control call can leave its lock taken (`with lock:` is not atomic against
    signals) or its reply unread; stopping must still end the process and remove the link, in bounded time."""
    import threading

    from lepetpal_tui.sim import process

    monkeypatch.setattr(process, "STOP_TIMEOUT_S", 0.5)
    link = tmp_path / "arm"
    sim = SimArm.start(link_path=str(link))
    if cut_short == "lock kept":
        sim._lock.acquire()
    else:
        sim._conn.send(("state",))  # asked, never read
        time.sleep(0.2)
    done = threading.Thread(target=sim.stop, daemon=True)
    done.start()
    done.join(timeout=15)
    assert not done.is_alive(), "stop() hung"
    assert not sim.is_alive and not os.path.lexists(link)


def test_sim_exits_when_its_owner_is_killed(tmp_path: Path) -> None:
    code = (
        "import sys, time; from lepetpal_tui.sim.process import SimArm; "
        f"s = SimArm.start(link_path={str(tmp_path / 'arm')!r}); print(s.pid, flush=True); time.sleep(60)"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    sim_pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(sim_pid):
        time.sleep(0.05)
    assert not _alive(sim_pid)
    assert not os.path.lexists(tmp_path / "arm")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_reg_write_then_action_through_scservo_sdk(sim_arm: SimArm, bus: Any) -> None:
    import scservo_sdk as scs

    ph, port = bus.packet_handler, bus.port_handler
    assert ph.regWriteTxRx(port, 2, 41, 1, [99]) == (scs.COMM_SUCCESS, 0)
    assert bus.read("Acceleration", "shoulder_lift") == 0  # registered, not applied yet
    assert ph.action(port, scs.BROADCAST_ID) == scs.COMM_SUCCESS
    assert bus.read("Acceleration", "shoulder_lift") == 99
