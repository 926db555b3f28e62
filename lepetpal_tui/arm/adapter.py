"""The arm adapter: LeRobot's SO101Follower with plain-array I/O and errors that say what to do.

Every failure becomes `ArmError(message)`; the message names what happened and the fix. Nothing here
calls `input()`. The control engine calls `read_joints` / `write_goals` at 30 Hz, so those are one bus
transaction each and allocate little.

Connect sequence (LeRobot's `connect(calibrate=False)` for a camera-less follower, split open so a
calibration write can happen with torque off):
  port lock -> bus.connect() (handshake) -> supply-voltage check -> torque off -> write the file's
  calibration if the motors do not hold it -> goal := present -> robot.configure() (torque on).
Writing Homing_Offset with torque on would shift the servo's frame under its goal and make it jump, and
a stale Goal_Position register would make the arm leap when torque comes on: hence goal := present first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lepetpal_tui.arm import ports as P
from lepetpal_tui.arm.calibration import (
    CalibrationError,
    JointCalibration,
    calibration_id,
    calibration_path,
    default_sim_calibration,
    load_calibration,
    save_calibration,
)
from lepetpal_tui.feetech.registers import BY_NAME
from lepetpal_tui.settings import JOINT_NAMES, ArmSettings, SafetySettings
from lepetpal_tui.wire import ServoHealth

__all__ = ["Arm", "ArmError", "ArmGlitch", "close_robot", "diagnose_connect_failure", "open_robot"]

FloatArray = npt.NDArray[np.float64]
_N = len(JOINT_NAMES)
_IDS = list(range(1, _N + 1))
_RESYNC_S = 0.02  # after an out-of-step reply: time for the other late replies to arrive before dropping them
# Present_Load (2, sign bit 10), Present_Voltage (1), Present_Temperature (1): one sync read.
_HEALTH_ADDR = BY_NAME["Present_Load"].address
_HEALTH_LEN = BY_NAME["Present_Temperature"].address + 1 - _HEALTH_ADDR
_DIAG_TIMEOUT_S = 0.25  # long enough to see a reply LeRobot's 50 ms timeout missed
# LeRobot's handshake pings each servo once, without retries: one lost reply fails the connect. A glitch
# (see ArmGlitch) is tried again; a fault the probe can name is not. Measured: stopping the simulated arm
# for 80 ms at a random moment of connect failed 2 of 8 connects (2-core Intel Xeon); the engine then stays
# in ERROR (a suspect for CI's test_loading timeout, not proven).
CONNECT_TRIES = 3
_RETRY_PAUSE_S = 0.2  # lets late replies land before the port is reopened (opening it flushes them)
_SETUP_MOTORS = "lerobot-setup-motors --robot.type=so101_follower --robot.port={port}"


class ArmError(Exception):
    """An arm problem; str(error) is one paragraph: what happened and what to do."""

    says_what_to_do = True  # read by the engine, which then adds no generic advice of its own


def _joint_list(ids: list[int]) -> str:
    if sorted(ids) == _IDS:
        return "(all six)"
    return ", ".join(f"{i} ({JOINT_NAMES[i - 1]})" if 1 <= i <= _N else str(i) for i in ids)


def _errno_of(exc: BaseException) -> int | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2] if line.strip())
    return text or type(exc).__name__


# -------------------------------------------------------------------------------------- diagnosis


def _voltage_problem(volts: dict[int, float], safety: SafetySettings) -> str | None:
    if not volts:
        return None
    lo, hi = min(volts.values()), max(volts.values())
    if lo >= safety.min_voltage_v and hi <= safety.max_voltage_v:
        return None
    shown = ", ".join(f"{i}: {v:.1f} V" for i, v in sorted(volts.items()))
    low = lo < safety.min_voltage_v
    return (
        f"Supply voltage out of range: the servos measure {(lo if low else hi):.1f} V ({shown}); allowed "
        f"{safety.min_voltage_v:g}-{safety.max_voltage_v:g} V (safety.min_voltage_v / safety.max_voltage_v). "
        + (
            "Check that the arm's power supply is plugged in and switched on and rated for the servos "
            "(5 V for 7.4 V STS3215, 12 V for 12 V ones), and that its barrel plug is seated."
            if low
            else "A supply above the servos' rating damages them: use the supply that came with the arm."
        )
    )


def diagnose_probe(port: str, probe: P.BusProbe, safety: SafetySettings) -> str | None:
    """Turn what the servos answered into the one most useful message (None: nothing wrong found)."""
    replies = probe.pings.values()
    if all(r.status == "timeout" for r in replies):
        return (
            f"Nothing answers on {port}: no servo replied to a ping at 1 Mbps. Check that the arm's power "
            "supply is plugged in and switched on (USB alone does not power the servos), that the cable runs "
            "from the controller board to the first servo, and that the servos were set to 1 Mbps by "
            f"`{_SETUP_MOTORS.format(port=port)}`."
        )
    corrupt = sorted(r.motor_id for r in replies if r.status == "corrupt")
    if corrupt:
        return (
            f"Replies from servos {_joint_list(corrupt)} on {port} arrive corrupted (bad checksum or stray "
            "bytes). Check the bus cable and its connectors, keep it away from the power leads, make sure "
            "no other program uses the port, then try again."
        )
    slow = sorted(r.motor_id for r in replies if r.status == "ok" and r.latency_s > P.LEROBOT_REPLY_LIMIT_S)
    if slow:
        worst = max(probe.pings[i].latency_s for i in slow) * 1000
        return (
            f"Servos {_joint_list(slow)} answer, but after {worst:.0f} ms; LeRobot waits about 50 ms. With an "
            "FTDI adapter lower its latency timer (`echo 1 | sudo tee "
            "/sys/bus/usb-serial/devices/<ttyUSBn>/latency_timer`); otherwise plug the arm in directly "
            "rather than through a hub, and check that the computer is not overloaded."
        )
    volts = _voltage_problem(probe.voltages, safety)
    flagged = {i: r.error for i, r in probe.pings.items() if r.status == "ok" and r.error}
    if volts:
        return volts
    by_bit = lambda bit: sorted(i for i, e in flagged.items() if e & bit)  # noqa: E731
    if by_bit(P.ERR_VOLTAGE):
        ids = by_bit(P.ERR_VOLTAGE)
        shown = ", ".join(sorted({f"{probe.voltages[i]:.1f} V" for i in ids if i in probe.voltages})) or "unknown"
        return (
            f"Servos {_joint_list(ids)} report an input-voltage error (they measure {shown}). Check the "
            "power supply's voltage and its plug, then power-cycle the arm."
        )
    if by_bit(P.ERR_OVERHEAT):
        return (
            f"Servos {_joint_list(by_bit(P.ERR_OVERHEAT))} report overheating. Switch the arm's power off and "
            "let it cool for about 10 minutes; look for a joint that is jammed or a gripper squeezing an "
            "object, which keeps a servo at full effort."
        )
    if by_bit(P.ERR_OVERLOAD):
        return (
            f"Servos {_joint_list(by_bit(P.ERR_OVERLOAD))} report an overload: a joint is blocked or carrying "
            "too much. Free the joint, then power-cycle the arm (the servo keeps the fault until then)."
        )
    if flagged:
        return (
            f"Servos {_joint_list(sorted(flagged))} report error flags "
            f"{ {i: hex(e) for i, e in flagged.items()} }. Power-cycle the arm and try again."
        )
    missing = probe.missing
    if missing:
        present = probe.answered
        return (
            f"Motors {_joint_list(missing)} do not answer on {port} (motors {_joint_list(present)} do). Check "
            "the daisy-chain cable into each missing servo; a new or replaced servo needs its id and baud "
            f"rate set once with `{_SETUP_MOTORS.format(port=port)}`."
        )
    wrong = {i: m for i, m in probe.models.items() if m != P.STS3215_MODEL}
    if wrong:
        found = ", ".join(f"{i}: {m}" for i, m in sorted(probe.models.items()))
        return (
            f"Servos {_joint_list(sorted(wrong))} report model numbers {sorted(set(wrong.values()))}, but an "
            f"SO-101 uses STS3215 servos (model {P.STS3215_MODEL}); found {found}. Replace the wrong servo, or "
            "check that arm.port points at the follower arm and not at another device."
        )
    if len(set(probe.firmware.values())) > 1:
        found = ", ".join(f"{i}: {v}" for i, v in sorted(probe.firmware.items()))
        return (
            f"The servos run different firmware versions ({found}); LeRobot requires the same version on all "
            "six. Update them with Feetech's FD software (https://www.feetechrc.com/software), then retry."
        )
    return None


class ArmGlitch(ArmError):
    """A connect that failed although every servo then answers a probe normally: a reply lost or late on
    the wire (USB noise, or a computer too busy to read it in LeRobot's ~34 ms). `Arm.connect` tries again."""

    def __init__(self, port: str, cause: str, tries: int = 1) -> None:
        self.cause = cause
        again = f" {tries} times" if tries > 1 else ""
        super().__init__(
            f"Connecting to the arm on {port} failed{again}: {cause}. The servos answer a probe normally, so "
            "this is a glitch on the bus: power-cycle the arm, replug its USB cable and connect again; "
            "`lepetpal ports` shows what answers."
        )


def diagnose_connect_failure(port: str, exc: BaseException, safety: SafetySettings) -> ArmError:
    """Explain a failed open/handshake: ArmGlitch when the servos answer a probe normally afterwards,
    else an ArmError naming the fault. The port must already be closed (the probe reopens it)."""
    if not os.path.exists(port):
        return ArmError(
            f"The arm's port {port} is gone (USB cable unplugged, or the adapter reset). Plug it back in, "
            "run `lepetpal ports` to see where it appears, and connect again."
        )
    code = _errno_of(exc)
    if code in (errno.EACCES, errno.EPERM, errno.EBUSY, errno.ENOENT) or isinstance(exc, P.PortBusyError):
        return ArmError(P.open_error_note(port, exc if isinstance(exc, OSError) else OSError(code, str(exc))))
    try:
        with P.RawBus(port) as bus:
            probe = P.scan(bus, timeout_s=_DIAG_TIMEOUT_S, thorough=True)
    except OSError as probe_exc:
        return ArmError(P.open_error_note(port, probe_exc))
    found = diagnose_probe(port, probe, safety)
    if found:
        return ArmError(found)
    return ArmGlitch(port, _first_line(exc))


# ------------------------------------------------------------------------------------ open / close


def check_port(port: str) -> None:
    """ArmError when `port` is missing or no serial port at all: said before anything else (calibration,
    holders), which would otherwise explain the wrong problem."""
    if not os.path.exists(port):
        raise ArmError(P.open_error_note(port, OSError(errno.ENOENT, "missing")))
    if why := P.not_a_serial_port(port):
        raise ArmError(why)


def open_robot(
    port: str, arm: ArmSettings, safety: SafetySettings, *, is_sim: bool, cal_dir: Path | None = None,
    cal_id: str | None = None,
) -> tuple[Any, int]:
    """Lock the port, build an SO101Follower and open its bus with LeRobot's handshake.

    Returns (robot, lock_fd). On failure everything is closed again (a failed LeRobot handshake leaves
    the port open, which would make the retry fail) and ArmError explains why."""
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    if port in ("sim", "auto"):
        raise ArmError(f'Internal error: arm port "{port}" must be resolved to a device path before connecting.')
    check_port(port)
    try:
        lock_fd = P.acquire_port_lock(port)
    except OSError as exc:
        raise ArmError(P.open_error_note(port, exc)) from None
    try:
        # Two programs on one bus garble each other's packets; refuse rather than misbehave. A pty's own
        # simulator (ours or another one) holds its slave too, and is not counted (see port_holders).
        if P.port_holders(port):
            raise ArmError(P.open_error_note(port, P.PortBusyError(errno.EBUSY, "held")))
        path = cal_dir if cal_dir is not None else calibration_path(arm, is_sim).parent
        config = SO101FollowerConfig(
            port=port,
            id=cal_id if cal_id is not None else calibration_id(arm, is_sim),
            calibration_dir=path,
            use_degrees=arm.units == "degrees",
            num_read_retries=arm.read_retries,
        )
        try:
            robot = SO101Follower(config)
        except Exception as exc:  # draccus raises assorted errors on a malformed calibration file
            raise ArmError(
                f"The calibration file in {path} cannot be loaded ({_first_line(exc)}). "
                "Run `lepetpal calibrate` to record a new one."
            ) from None
        try:
            robot.bus.connect(handshake=True)
        except Exception as exc:
            _close_port(robot)
            raise diagnose_connect_failure(port, exc, safety) from None
        block_bus_waits(robot.bus)
        return robot, lock_fd
    except BaseException:
        os.close(lock_fd)
        raise


# How long one read of the port may wait for bytes (pyserial's read timeout on LeRobot's port).
BUS_READ_WAIT_S = 0.002


def block_bus_waits(bus: Any) -> bool:
    """Make the bus client sleep while it waits for a servo's reply, instead of spinning.

    scservo_sdk opens the port with timeout=0 and polls it in a loop until the reply or its packet
    timeout: a spinning control thread cannot run at real-time priority (it would keep the CPU from the
    kernel worker that moves the reply's bytes to the port, and from the simulator). With a read timeout
    each poll waits in select() for up to BUS_READ_WAIT_S or until the bytes it asked for are in, so the
    SDK's loop and its own packet timeout are unchanged. Measured on the 2-core Intel Xeon with AMX
    (bench/arm_cycle.py, simulated arm, idle machine): read + write cycle median 0.574 ms spinning, 0.578
    blocking (1 Mbps wire time: 0.80 / 0.85 ms), the thread on a CPU 96 % of the cycle spinning, 26 %
    blocking. Returns whether the reads now wait (`bus_waits_block`).
    """
    ser = getattr(getattr(bus, "port_handler", None), "ser", None)
    if ser is None or not hasattr(ser, "timeout"):
        return False
    try:
        ser.timeout = BUS_READ_WAIT_S
    except Exception:  # not a pyserial port, or one that refuses: the client keeps spinning
        return False
    return bus_waits_block(bus)


def bus_waits_block(bus: Any) -> bool:
    """Whether the bus client's reads wait in the kernel (a positive read timeout) rather than spin."""
    timeout = getattr(getattr(getattr(bus, "port_handler", None), "ser", None), "timeout", None)
    return isinstance(timeout, int | float) and timeout > 0


def _close_port(robot: Any) -> None:
    handler = robot.bus.port_handler
    with contextlib.suppress(Exception):
        if handler.is_open:
            handler.closePort()


def close_robot(robot: Any, lock_fd: int | None, *, torque_off: bool) -> None:
    """Torque off (if asked and possible), close the port, drop the lock. Never raises."""
    bus = robot.bus
    if torque_off and bus.port_handler.is_open:
        with contextlib.suppress(Exception):
            bus.port_handler.is_using = False  # a transaction cut short by an error leaves this set
            bus.disable_torque(num_retry=2)
    _close_port(robot)
    if lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(lock_fd)


def _drop_stale_input(bus: Any) -> None:
    """Discard bytes waiting on the port before a new request.

    The bus is half duplex and servos never speak unasked, so anything already there is a late reply to
    an earlier request that timed out (a loaded machine, a slow servo). scservo_sdk never drops it (its
    clearPort only flushes output) and its readRx takes the first packet with the right ID, so one late
    reply shifts every later read. Seen on the simulated arm on a loaded 2-core machine: health reads got
    a position reply (3 bytes: its 2 data bytes and checksum) three times in a row; by the same logic a
    joint read could take a late health reply's load bytes for positions.
    """
    ser = getattr(getattr(bus, "port_handler", None), "ser", None)
    reset = getattr(ser, "reset_input_buffer", None)
    if callable(reset):
        with contextlib.suppress(Exception):  # a closed port fails the request itself, with its own error
            reset()


def to_motor_calibration(cal: dict[str, JointCalibration]) -> dict[str, Any]:
    from lerobot.motors import MotorCalibration

    return {j: MotorCalibration(**asdict(c)) for j, c in cal.items()}


# -------------------------------------------------------------------------------------------- Arm


class Arm:
    """One SO-101 follower on `port` (a device path; "auto"/"sim" are resolved by the caller)."""

    def __init__(self, settings: ArmSettings, port: str, safety: SafetySettings, is_sim: bool = False) -> None:
        self.settings = settings
        self.port = port
        self.safety = safety
        self.is_sim = is_sim
        self.calibration_file = calibration_path(settings, is_sim)
        self._robot: Any = None
        self._lock_fd: int | None = None
        self.connect_glitches: list[str] = []  # the last connect's glitches that a retry got past
        self._io = threading.Lock()  # the engine may read health from another thread than the tick
        self._names = list(JOINT_NAMES)
        self._out = np.zeros(_N, dtype=np.float64)

    @property
    def is_connected(self) -> bool:
        return self._robot is not None and bool(self._robot.bus.port_handler.is_open)

    @property
    def bus_waits_block(self) -> bool:
        """Whether the bus client sleeps while it waits for a reply (see `block_bus_waits`): then the
        control thread may do its bus work at real-time priority. Read live: a port LeRobot opened again
        (timeout 0) makes this False at once."""
        robot = self._robot
        return robot is not None and bus_waits_block(robot.bus)

    # ------------------------------------------------------------------------------------- connect

    def connect(self) -> None:
        """Open, check and hold the arm. Raises ArmError; after a failure the port is free for a retry."""
        if self.is_connected:
            return
        check_port(self.port)
        calibration = self._calibration()
        self.connect_glitches = []
        for tries in range(1, CONNECT_TRIES + 1):
            try:
                self._connect_once(calibration)
                return
            except ArmGlitch as glitch:
                self.connect_glitches.append(glitch.cause)
                if tries == CONNECT_TRIES:
                    raise ArmGlitch(self.port, glitch.cause, tries) from None
                time.sleep(_RETRY_PAUSE_S)

    def _connect_once(self, calibration: dict[str, JointCalibration]) -> None:
        robot, lock_fd = open_robot(self.port, self.settings, self.safety, is_sim=self.is_sim)
        try:
            bus = robot.bus
            volts = bus.sync_read("Present_Voltage", normalize=False, num_retry=2)
            problem = _voltage_problem(
                {bus.motors[j].id: v / 10.0 for j, v in volts.items()}, self.safety
            )
            if problem:
                raise ArmError(problem)
            bus.disable_torque()
            motor_cal = to_motor_calibration(calibration)
            bus.calibration = motor_cal
            if not bus.is_calibrated:
                bus.write_calibration(motor_cal)
            present = bus.sync_read("Present_Position", normalize=False, num_retry=2)
            bus.sync_write("Goal_Position", present, normalize=False)
            robot.configure()  # LeRobot's motor setup; ends with torque on, holding `present`
        except ArmError:
            close_robot(robot, lock_fd, torque_off=False)
            raise
        except Exception as exc:
            close_robot(robot, lock_fd, torque_off=False)
            raise diagnose_connect_failure(self.port, exc, self.safety) from None
        self._robot, self._lock_fd = robot, lock_fd

    def _calibration(self) -> dict[str, JointCalibration]:
        path = self.calibration_file
        if not path.exists():
            if self.is_sim:
                save_calibration(path, default_sim_calibration())
            else:
                raise ArmError(
                    f"No calibration file for robot id {self.settings.robot_id!r}: expected {path}. Run "
                    "`lepetpal calibrate` with the arm connected to record one, or set arm.calibration_dir / "
                    "arm.robot_id to where an existing LeRobot calibration lives."
                )
        try:
            return load_calibration(path)
        except CalibrationError as exc:
            raise ArmError(str(exc)) from None

    def disconnect(self, torque_off: bool = True) -> None:
        """Release the arm; never raises, safe to call twice."""
        robot, lock_fd = self._robot, self._lock_fd
        self._robot, self._lock_fd = None, None
        if robot is None:
            return
        with self._io:
            close_robot(robot, lock_fd, torque_off=torque_off)

    # --------------------------------------------------------------------------------------- I/O

    def _bus(self) -> Any:
        robot = self._robot
        if robot is None:
            raise ArmError("The arm is not connected. Connect it first (the Port pane, or restart the run).")
        return robot.bus

    def _bus_error(self, what: str, exc: BaseException) -> ArmError:
        if not os.path.exists(self.port):
            return ArmError(
                f"{what} failed: the arm's port {self.port} disappeared (USB cable unplugged or the adapter "
                "reset). Plug it back in and reconnect."
            )
        return ArmError(
            f"{what} failed on {self.port}: {_first_line(exc)}. Check the arm's power supply and its cables; "
            "reconnecting runs a full check that names the servo at fault."
        )

    def read_joints(self) -> FloatArray:
        """Present positions in JOINT_NAMES order (one sync_read; retries per arm.read_retries)."""
        bus = self._bus()
        try:
            with self._io:
                _drop_stale_input(bus)
                values = bus.sync_read("Present_Position", num_retry=self.settings.read_retries)
        except Exception as exc:
            raise self._bus_error("Reading the joints", exc) from None
        out = np.empty(_N, dtype=np.float64)
        for i, name in enumerate(self._names):
            out[i] = values[name]
        return out

    def write_goals(self, goals: FloatArray) -> None:
        """One sync_write of Goal_Position. No clamping here (the engine's safety filter owns that), but
        a non-finite or misshaped goal is refused."""
        arr = np.asarray(goals, dtype=np.float64)
        if arr.shape != (_N,) or not np.isfinite(arr).all():
            raise ArmError(
                f"Refused to write goals {arr.tolist()}: need {_N} finite numbers in "
                f"{', '.join(JOINT_NAMES)} order. This is a bug upstream of the arm (policy or safety filter)."
            )
        bus = self._bus()
        values = {name: float(arr[i]) for i, name in enumerate(self._names)}
        try:
            with self._io:
                bus.sync_write("Goal_Position", values)
        except Exception as exc:
            raise self._bus_error("Writing goals", exc) from None

    def read_health(self) -> tuple[ServoHealth, ...]:
        """Temperature, load and voltage of each servo plus its status error byte, in one sync read."""
        bus = self._bus()
        ph, port = bus.packet_handler, bus.port_handler
        rows: list[tuple[list[int], int]] = []
        last = "no reply"
        with self._io:
            for _ in range(1 + self.settings.read_retries):
                port.is_using = False
                rows = []
                _drop_stale_input(bus)
                result = ph.syncReadTx(port, _HEALTH_ADDR, _HEALTH_LEN, _IDS, len(_IDS))
                if result == 0:
                    for motor_id in _IDS:
                        data, result, error = ph.readRx(port, motor_id, _HEALTH_LEN)
                        if result != 0:
                            break
                        if len(data) != _HEALTH_LEN:
                            # A late status packet from an earlier transaction (a reply that missed its
                            # timeout on a loaded machine) answered in this one's place. Let the rest of
                            # those late replies arrive, drop them, and retry in step again.
                            last = f"servo {motor_id} answered with {len(data)} bytes, not {_HEALTH_LEN}"
                            time.sleep(_RESYNC_S)
                            _drop_stale_input(bus)
                            break
                        rows.append((list(data), int(error)))
                if len(rows) == _N:
                    break
                if result != 0:
                    last = ph.getTxRxResult(result)
        if len(rows) != _N:
            raise self._bus_error("Reading servo health", ConnectionError(last))
        out = []
        for name, (data, error) in zip(JOINT_NAMES, rows, strict=True):
            load_raw = data[0] | (data[1] << 8)
            out.append(
                ServoHealth(
                    joint=name,
                    temperature_c=float(data[3]),
                    load_pct=(load_raw & 0x3FF) / 10.0,  # bit 10 is the direction
                    voltage_v=data[2] / 10.0,
                    error_bits=error,
                )
            )
        return tuple(out)

    def hold(self) -> FloatArray:
        """Make the arm stay where it is: present position becomes the goal. Returns that pose."""
        pose = self.read_joints()
        self.write_goals(pose)
        return pose

    def set_torque(self, on: bool) -> None:
        bus = self._bus()
        try:
            with self._io:
                if on:
                    # The goal register may be stale (the arm was moved while limp): hold where it is.
                    present = bus.sync_read("Present_Position", normalize=False, num_retry=2)
                    bus.sync_write("Goal_Position", present, normalize=False)
                    bus.enable_torque(num_retry=2)
                else:
                    bus.disable_torque(num_retry=2)
        except Exception as exc:
            raise self._bus_error("Switching torque " + ("on" if on else "off"), exc) from None
