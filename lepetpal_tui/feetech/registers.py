"""The STS3215 control table as the simulated servo holds it.

Written from Feetech's STS/SMS memory table, independently of LeRobot's copy, so that the unit tests can
cross-check the two (a sim derived from the client under test would agree with any bug in it).
Addresses 0..39 are EEPROM, 40..86 RAM. Multi-byte values are little-endian.
"""

from __future__ import annotations

from dataclasses import dataclass

STS3215_MODEL_NUMBER = 777
FIRMWARE_MAJOR = 3
FIRMWARE_MINOR = 10
RESOLUTION = 4096  # steps per turn
MEMORY_SIZE = 256


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    size: int
    default: int = 0
    writable: bool = True
    sign_bit: int | None = None  # sign-magnitude encoding: index of the direction bit


REGISTERS: tuple[Register, ...] = (
    # EEPROM
    Register("Firmware_Major_Version", 0, 1, FIRMWARE_MAJOR, writable=False),
    Register("Firmware_Minor_Version", 1, 1, FIRMWARE_MINOR, writable=False),
    Register("Model_Number", 3, 2, STS3215_MODEL_NUMBER, writable=False),
    Register("ID", 5, 1, 1),
    Register("Baud_Rate", 6, 1, 0),  # 0 = 1 Mbps
    Register("Return_Delay_Time", 7, 1, 250),  # units of 2 us; LeRobot writes 0
    Register("Response_Status_Level", 8, 1, 1),  # 0: only PING and READ get a status packet
    Register("Min_Position_Limit", 9, 2, 0),
    Register("Max_Position_Limit", 11, 2, 4095),
    Register("Max_Temperature_Limit", 13, 1, 70),  # degrees C
    Register("Max_Voltage_Limit", 14, 1, 140),  # 0.1 V
    Register("Min_Voltage_Limit", 15, 1, 40),  # 0.1 V
    Register("Max_Torque_Limit", 16, 2, 1000),  # 0.1 %
    Register("Phase", 18, 1, 0x0C),  # bit 4 (angle feedback mode) clear: positions stay in 0..4095
    Register("Unloading_Condition", 19, 1, 44),
    Register("LED_Alarm_Condition", 20, 1, 47),
    Register("P_Coefficient", 21, 1, 32),
    Register("D_Coefficient", 22, 1, 32),
    Register("I_Coefficient", 23, 1, 0),
    Register("Minimum_Startup_Force", 24, 2, 16),
    Register("CW_Dead_Zone", 26, 1, 1),
    Register("CCW_Dead_Zone", 27, 1, 1),
    Register("Protection_Current", 28, 2, 500),
    Register("Angular_Resolution", 30, 1, 1),
    Register("Homing_Offset", 31, 2, 0, sign_bit=11),
    Register("Operating_Mode", 33, 1, 0),
    Register("Protective_Torque", 34, 1, 20),
    Register("Protection_Time", 35, 1, 200),
    Register("Overload_Torque", 36, 1, 80),
    Register("Velocity_closed_loop_P_proportional_coefficient", 37, 1, 10),
    Register("Over_Current_Protection_Time", 38, 1, 200),
    Register("Velocity_closed_loop_I_integral_coefficient", 39, 1, 200),
    # RAM
    Register("Torque_Enable", 40, 1, 0),
    Register("Acceleration", 41, 1, 0),  # 100 steps/s^2 units; 0 = as fast as the motor can
    Register("Goal_Position", 42, 2, 2048, sign_bit=15),
    Register("Goal_Time", 44, 2, 0),
    Register("Goal_Velocity", 46, 2, 0, sign_bit=15),  # steps/s; 0 = full speed
    Register("Torque_Limit", 48, 2, 1000),
    Register("Lock", 55, 1, 0),
    Register("Present_Position", 56, 2, 2048, writable=False, sign_bit=15),
    Register("Present_Velocity", 58, 2, 0, writable=False, sign_bit=15),
    Register("Present_Load", 60, 2, 0, writable=False, sign_bit=10),
    Register("Present_Voltage", 62, 1, 120, writable=False),
    Register("Present_Temperature", 63, 1, 25, writable=False),
    Register("Status", 65, 1, 0, writable=False),
    Register("Moving", 66, 1, 0, writable=False),
    Register("Present_Current", 69, 2, 0, writable=False),  # 6.5 mA units
    Register("Goal_Position_2", 71, 2, 0, writable=False),
    # Factory area
    Register("Moving_Velocity_Threshold", 80, 1, 50),
    Register("DTs", 81, 1, 0),
    Register("Velocity_Unit_factor", 82, 1, 0),
    Register("Hts", 83, 1, 0),
    Register("Maximum_Velocity_Limit", 84, 1, 0),
    Register("Maximum_Acceleration", 85, 1, 0),
    Register("Acceleration_Multiplier", 86, 1, 0),
)

BY_NAME: dict[str, Register] = {r.name: r for r in REGISTERS}
BY_ADDRESS: dict[int, Register] = {r.address: r for r in REGISTERS}

# Bytes a WRITE may change. Writes to the other addresses are ignored, as the real servo does (its status
# byte has no "instruction error" bit to report them with).
WRITABLE: frozenset[int] = frozenset(
    a for r in REGISTERS if r.writable for a in range(r.address, r.address + r.size)
)


def register_at(address: int) -> Register | None:
    """The register that starts at `address`, if any."""
    return BY_ADDRESS.get(address)


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    magnitude = min(abs(value), (1 << sign_bit) - 1)
    return ((1 << sign_bit) if value < 0 else 0) | magnitude


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if (raw >> sign_bit) & 1 else magnitude


def default_memory(motor_id: int) -> bytearray:
    """A fresh register file for a servo with ID `motor_id`, as it powers up."""
    mem = bytearray(MEMORY_SIZE)
    for reg in REGISTERS:
        mem[reg.address : reg.address + reg.size] = reg.default.to_bytes(reg.size, "little")
    mem[BY_NAME["ID"].address] = motor_id
    return mem
