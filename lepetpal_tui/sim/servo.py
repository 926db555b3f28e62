"""One simulated STS3215: register file, motion model, thermal model and injected faults.

Frames: `actual` is the raw encoder position (what the magnet reads, float steps). The servo reports
Present_Position = (actual - Homing_Offset) mod 4096 and tracks Goal_Position in that same frame, after
clamping it to [Min_Position_Limit, Max_Position_Limit] (no clamping when both are 0, as on the servo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lepetpal_tui.feetech.protocol import ErrorBit
from lepetpal_tui.feetech.registers import (
    BY_NAME,
    RESOLUTION,
    WRITABLE,
    decode_sign_magnitude,
    default_memory,
    encode_sign_magnitude,
)

# Motion: first-order approach to the target, capped in speed (and in acceleration when the Acceleration
# register is set). 3400 steps/s is about 300 deg/s, an STS3215 at 12 V without load.
MAX_SPEED = 3400.0  # steps/s
APPROACH_RATE = 25.0  # 1/s: near the goal the error shrinks by e every 40 ms (15 deg settle in ~0.25 s)
SETTLE_STEPS = 0.5
SUBSTEP_S = 0.005

# Load in 0.1 % of rated torque; the thermal model heats with load squared.
HOLD_LOAD = 15.0
LOAD_PER_STEP_ERROR = 0.6
PUSH_LOAD_BASE = 300.0
PUSH_LOAD_PER_STEP = 2.0
AMBIENT_C = 25.0
THERMAL_TAU_S = 120.0
FULL_LOAD_RISE_C = 50.0
CURRENT_UNITS_PER_LOAD = 0.3  # 6.5 mA units per 0.1 % load (100 % load ~ 2 A)
IDLE_CURRENT_UNITS = 8.0

FAULT_KINDS = (
    "silent",
    "overheat",
    "overload",
    "voltage",
    "slow_reply",
    "bad_checksum",
    "unplug",
    "low_voltage",
    "wrong_model",
    "firmware",
    "no_health_reply",
    "lost_reply",
)

_A = {name: reg.address for name, reg in BY_NAME.items()}


@dataclass
class ServoFaults:
    silent: bool = False
    no_health_reply: bool = False  # answers position reads and writes, but not reads from Present_Load on
    error_bits: int = 0
    slow_reply_ms: float = 0.0
    bad_checksum: bool = False
    voltage_v: float | None = None
    temperature_c: float | None = None
    model_number: int | None = None
    firmware_minor: int | None = None
    lost_replies: int = 0  # the next N status packets are lost on the wire (then the servo answers again)

    def active(self) -> list[str]:
        out = []
        if self.silent:
            out.append("silent")
        if self.no_health_reply:
            out.append("no_health_reply")
        if self.error_bits & ErrorBit.OVERHEAT:
            out.append("overheat")
        if self.error_bits & ErrorBit.OVERLOAD:
            out.append("overload")
        if self.error_bits & ErrorBit.VOLTAGE:
            out.append("voltage")
        if self.slow_reply_ms:
            out.append("slow_reply")
        if self.bad_checksum:
            out.append("bad_checksum")
        if self.voltage_v is not None:
            out.append("low_voltage")
        if self.model_number is not None:
            out.append("wrong_model")
        if self.firmware_minor is not None:
            out.append("firmware")
        if self.lost_replies:
            out.append("lost_reply")
        return out


class SimServo:
    """Register file plus physics. Call `advance(now)` before reading or writing registers."""

    def __init__(self, motor_id: int, now: float, actual: float = 2048.0) -> None:
        self.mem = default_memory(motor_id)
        self.actual = actual
        self.velocity = 0.0
        self.load = 0.0
        self.temperature = AMBIENT_C
        self.voltage = 12.0
        self.faults = ServoFaults()
        self.pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION
        # False (the default): while limp the goal follows the present position, so torque-on never jumps.
        # True: like a real STS3215, the goal register keeps what was last written and the servo drives to
        # it when torque comes back (a stale goal makes the arm jump; see SimArm.set_limp_goal_kept).
        self.limp_goal_kept = False
        self._t = now
        self._sync_goal_to_present()
        self._refresh_present()

    # ------------------------------------------------------------------------------------------ registers

    @property
    def motor_id(self) -> int:
        return self.mem[_A["ID"]]

    def get(self, name: str) -> int:
        """A register's value, sign-decoded."""
        reg = BY_NAME[name]
        raw = int.from_bytes(self.mem[reg.address : reg.address + reg.size], "little")
        return decode_sign_magnitude(raw, reg.sign_bit) if reg.sign_bit is not None else raw

    def _set(self, name: str, value: int) -> None:
        reg = BY_NAME[name]
        if reg.sign_bit is not None:
            value = encode_sign_magnitude(value, reg.sign_bit)
        value = max(0, min(value, (1 << (8 * reg.size)) - 1))
        self.mem[reg.address : reg.address + reg.size] = value.to_bytes(reg.size, "little")

    def read(self, address: int, length: int) -> bytes:
        self._refresh_present()
        data = bytes(self.mem[address : address + length])
        return data + bytes(length - len(data))  # past the end of the table reads as zeros

    def write(self, address: int, data: bytes) -> None:
        """A WRITE/REG_WRITE+ACTION/SYNC_WRITE payload. Read-only bytes are ignored."""
        for i, byte in enumerate(data):
            addr = address + i
            if addr in WRITABLE:
                self.mem[addr] = byte
        touched = range(address, address + len(data))
        if _A["Torque_Enable"] in touched:
            torque = self.mem[_A["Torque_Enable"]]
            if torque == 128:
                # STS feature: 128 makes the present position the new mid (2048) by moving the offset.
                self._set("Homing_Offset", round(self.actual) - 2048)
                self.mem[_A["Torque_Enable"]] = 0
                self._sync_goal_to_present()
            elif torque:
                self.mem[_A["Torque_Enable"]] = 1
        self._refresh_present()

    # ---------------------------------------------------------------------------------------------- model

    @property
    def torque_on(self) -> bool:
        return self.mem[_A["Torque_Enable"]] == 1

    def present(self) -> float:
        return (self.actual - self.get("Homing_Offset")) % RESOLUTION

    def _target(self) -> tuple[float, float]:
        """(target in the present frame, how far the goal lies beyond a position limit)."""
        goal = float(self.get("Goal_Position"))
        lo, hi = self.get("Min_Position_Limit"), self.get("Max_Position_Limit")
        if lo == 0 and hi == 0:
            return goal, 0.0
        target = min(max(goal, lo), hi)
        return target, abs(goal - target)

    def _sync_goal_to_present(self) -> None:
        # With torque off the servo keeps its goal on the present position, so enabling torque holds the
        # pose instead of jumping to a stale goal.
        self._set("Goal_Position", round(self.present()) % RESOLUTION)

    def advance(self, now: float) -> None:
        dt_total = now - self._t
        if dt_total <= 0:
            return
        self._t = now
        steps = max(1, math.ceil(dt_total / SUBSTEP_S))
        dt = dt_total / steps
        for _ in range(steps):
            self._step(dt)
        self._refresh_present()

    def _step(self, dt: float) -> None:
        if not self.torque_on:
            self.velocity = 0.0
            self.load = 0.0
            if not self.limp_goal_kept:
                self._sync_goal_to_present()
        elif self.get("Operating_Mode") == 0:
            target, excess = self._target()
            error = target - self.present()
            speed_cap = abs(self.get("Goal_Velocity")) or MAX_SPEED
            wanted = max(-speed_cap, min(speed_cap, APPROACH_RATE * error))
            accel = self.get("Acceleration") * 100.0
            if accel > 0:
                max_dv = accel * dt
                wanted = max(self.velocity - max_dv, min(self.velocity + max_dv, wanted))
            self.velocity = wanted
            if abs(error) < SETTLE_STEPS and abs(wanted) < 5.0:
                self.actual += error
                self.velocity = 0.0
            else:
                self.actual += self.velocity * dt
            self._update_load(error, excess)
        self._update_temperature(dt)

    def _update_load(self, error: float, excess: float) -> None:
        gain = self.get("P_Coefficient") / 32.0
        load = HOLD_LOAD + LOAD_PER_STEP_ERROR * gain * abs(error)
        if excess > 0:
            # Goal beyond a position limit: the joint sits on the limit and pushes against it.
            load += PUSH_LOAD_BASE + PUSH_LOAD_PER_STEP * excess
        cap = float(min(self.get("Max_Torque_Limit"), self.get("Torque_Limit")))
        direction = 1.0 if (error if excess == 0 else self.get("Goal_Position") - self.present()) >= 0 else -1.0
        self.load = direction * min(load, cap)

    def _update_temperature(self, dt: float) -> None:
        equilibrium = AMBIENT_C + FULL_LOAD_RISE_C * (abs(self.load) / 1000.0) ** 2
        self.temperature += (equilibrium - self.temperature) * min(1.0, dt / THERMAL_TAU_S)

    def _refresh_present(self) -> None:
        self._set("Present_Position", round(self.present()) % RESOLUTION)
        self._set("Present_Velocity", round(self.velocity))
        self._set("Present_Load", round(self.load))
        self._set("Present_Current", round(IDLE_CURRENT_UNITS + CURRENT_UNITS_PER_LOAD * abs(self.load)))
        self._set("Present_Voltage", round(self.reported_voltage() * 10))
        self._set("Present_Temperature", round(self.reported_temperature()))
        self._set("Moving", int(abs(self.velocity) > self.get("Moving_Velocity_Threshold")))
        self._set("Status", self.error_byte())
        mem = self.mem
        if self.faults.model_number is not None:
            mem[3:5] = self.faults.model_number.to_bytes(2, "little")
        else:
            mem[3:5] = BY_NAME["Model_Number"].default.to_bytes(2, "little")
        minor = self.faults.firmware_minor
        mem[1] = minor if minor is not None else BY_NAME["Firmware_Minor_Version"].default

    def reported_voltage(self) -> float:
        return self.faults.voltage_v if self.faults.voltage_v is not None else self.voltage

    def reported_temperature(self) -> float:
        t = self.faults.temperature_c
        return t if t is not None else self.temperature

    def error_byte(self) -> int:
        """Status packet error byte: conditions the servo detects plus injected bits."""
        bits = self.faults.error_bits
        volts = self.reported_voltage() * 10
        if not self.get("Min_Voltage_Limit") <= volts <= self.get("Max_Voltage_Limit"):
            bits |= ErrorBit.VOLTAGE
        if self.reported_temperature() > self.get("Max_Temperature_Limit"):
            bits |= ErrorBit.OVERHEAT
        return bits & 0x7F

    def move_by_hand(self, actual: float) -> None:
        """Someone turns the horn: the encoder reads `actual`. With torque on the servo pulls back."""
        self.actual = float(actual) % RESOLUTION
        if not self.torque_on and not self.limp_goal_kept:
            self._sync_goal_to_present()
        self._refresh_present()

    def state(self) -> dict[str, Any]:
        self._refresh_present()
        return {
            "id": self.motor_id,
            "torque": self.torque_on,
            "goal": self.get("Goal_Position"),
            "present": self.get("Present_Position"),
            "actual": self.actual,
            "velocity": self.velocity,
            "load": self.get("Present_Load"),
            "current": self.get("Present_Current"),
            "voltage": self.reported_voltage(),
            "temperature": self.reported_temperature(),
            "homing_offset": self.get("Homing_Offset"),
            "min_limit": self.get("Min_Position_Limit"),
            "max_limit": self.get("Max_Position_Limit"),
            "lock": self.get("Lock"),
            "operating_mode": self.get("Operating_Mode"),
            "acceleration": self.get("Acceleration"),
            "return_delay": self.get("Return_Delay_Time"),
            "error": self.error_byte(),
            "faults": self.faults.active(),
        }
