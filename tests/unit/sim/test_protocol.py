"""Feetech protocol 0 as the simulated bus speaks it, checked in-process (no pty) against scservo_sdk's framing."""

from __future__ import annotations

import pytest

from lepetpal_tui.feetech.protocol import BROADCAST_ID, Instruction, PacketParser, build_packet, checksum
from lepetpal_tui.feetech.registers import BY_NAME, REGISTERS, STS3215_MODEL_NUMBER
from lepetpal_tui.sim.bus import SimBus


def _status(raw: bytes) -> tuple[int, int, bytes]:
    """(id, error, data) of one status packet, after checking its framing and checksum."""
    assert raw[:2] == b"\xff\xff"
    assert raw[3] == len(raw) - 4
    assert raw[-1] == checksum(raw[2:-1])
    return raw[2], raw[4], raw[5:-1]


def _send(bus: SimBus, motor_id: int, instr: int, params: bytes = b"") -> list[tuple[int, int, bytes]]:
    (pkt,) = PacketParser().feed(build_packet(motor_id, instr, params))
    return [_status(r.data) for r in bus.handle(pkt)]


def test_checksum_matches_scservo_sdk() -> None:
    import scservo_sdk as scs

    class Port:  # the two calls txPacket makes on scservo_sdk's PortHandler
        def __init__(self) -> None:
            self.is_using = False
            self.sent: list[int] = []

        def clearPort(self) -> None:
            pass

        def writePort(self, packet: list[int]) -> int:
            self.sent = list(packet)
            return len(packet)

    port = Port()
    tx = [0, 0, 3, 5, scs.INST_WRITE, 42, 0x34, 0x12, 0]
    assert scs.PacketHandler(0).txPacket(port, tx) == scs.COMM_SUCCESS
    assert bytes(port.sent) == build_packet(3, Instruction.WRITE, bytes((42, 0x34, 0x12)))


def test_parser_resyncs_after_noise_split_reads_and_bad_checksum() -> None:
    good = build_packet(2, Instruction.READ, bytes((56, 2)))
    bad = bytearray(build_packet(1, Instruction.PING))
    bad[-1] ^= 0x55
    parser = PacketParser()
    stream = b"\x00\x13\xff" + bytes(bad) + good + good
    out = []
    for i in range(0, len(stream), 3):  # arrives in small pieces, as from a serial port
        out += parser.feed(stream[i : i + 3])
    assert [(p.motor_id, p.instruction, p.params) for p in out] == [(2, Instruction.READ, bytes((56, 2)))] * 2
    assert parser.bad_checksums == 1


def test_ping_and_broadcast_ping_answer_in_id_order() -> None:
    bus = SimBus()
    assert _send(bus, 4, Instruction.PING) == [(4, 0, b"")]
    assert _send(bus, 9, Instruction.PING) == []
    assert [s[0] for s in _send(bus, BROADCAST_ID, Instruction.PING)] == [1, 2, 3, 4, 5, 6]


def test_read_returns_little_endian_register_bytes() -> None:
    bus = SimBus()
    ((mid, err, data),) = _send(bus, 1, Instruction.READ, bytes((3, 2)))
    assert (mid, err, int.from_bytes(data, "little")) == (1, 0, STS3215_MODEL_NUMBER)
    ((_, _, volts),) = _send(bus, 6, Instruction.READ, bytes((62, 1)))
    assert volts == bytes((120,))
    assert _send(bus, BROADCAST_ID, Instruction.READ, bytes((56, 2))) == []  # broadcast reads get no answer


def test_write_acks_and_ignores_read_only_bytes() -> None:
    bus = SimBus()
    assert _send(bus, 2, Instruction.WRITE, bytes((41, 254))) == [(2, 0, b"")]
    assert bus.servos[1].get("Acceleration") == 254
    assert _send(bus, 2, Instruction.WRITE, bytes((3, 0x00, 0x00))) == [(2, 0, b"")]
    assert bus.servos[1].get("Model_Number") == STS3215_MODEL_NUMBER
    # Broadcast write: applied everywhere, nobody answers.
    assert _send(bus, BROADCAST_ID, Instruction.WRITE, bytes((7, 0))) == []
    assert {s.get("Return_Delay_Time") for s in bus.servos} == {0}


def test_response_status_level_zero_silences_write_acks_but_not_reads() -> None:
    bus = SimBus()
    _send(bus, 1, Instruction.WRITE, bytes((8, 0)))
    assert _send(bus, 1, Instruction.WRITE, bytes((41, 10))) == []
    assert len(_send(bus, 1, Instruction.READ, bytes((41, 1)))) == 1


def test_reg_write_takes_effect_on_action_only() -> None:
    bus = SimBus()
    assert _send(bus, 5, Instruction.REG_WRITE, bytes((41, 77))) == [(5, 0, b"")]
    assert bus.servos[4].get("Acceleration") == 0
    assert _send(bus, BROADCAST_ID, Instruction.ACTION) == []
    assert bus.servos[4].get("Acceleration") == 77


def test_sync_read_replies_in_request_order_and_skips_unknown_ids() -> None:
    bus = SimBus()
    bus.servos[2].move_by_hand(1000)
    replies = _send(bus, BROADCAST_ID, Instruction.SYNC_READ, bytes((56, 2, 3, 1, 42, 2)))
    assert [(r[0], int.from_bytes(r[2], "little")) for r in replies] == [(3, 1000), (1, 2048), (2, 2048)]


def test_sync_write_sets_each_servo_and_never_answers() -> None:
    bus = SimBus()
    params = bytes((41, 1, 1, 11, 6, 66))
    assert _send(bus, BROADCAST_ID, Instruction.SYNC_WRITE, params) == []
    assert [s.get("Acceleration") for s in bus.servos] == [11, 0, 0, 0, 0, 66]


def test_error_bits_in_status_packets() -> None:
    bus = SimBus()
    bus.servos[0].faults.error_bits = 0x04
    ((_, err, _),) = _send(bus, 1, Instruction.READ, bytes((56, 2)))
    assert err == 0x04
    bus.servos[1].faults.voltage_v = 3.5  # below Min_Voltage_Limit (4.0 V): the servo flags it itself
    ((_, err, data),) = _send(bus, 2, Instruction.READ, bytes((62, 1)))
    assert (err, data) == (0x01, bytes((35,)))


def test_trace_records_requests_and_replies_only_when_enabled() -> None:
    bus = SimBus(trace=False)
    _send(bus, 1, Instruction.PING)
    assert not bus.trace
    bus.tracing = True
    _send(bus, 1, Instruction.WRITE, bytes((42, 0x00, 0x08)))
    rx, tx = bus.trace
    assert (rx.direction, rx.instruction, rx.motor_id, rx.register, rx.values) == (
        "rx", "WRITE", 1, "Goal_Position", (2048,))
    assert (tx.direction, tx.instruction, tx.motor_id) == ("tx", "STATUS", 1)


@pytest.mark.parametrize("name", sorted(
    {"Model_Number", "Firmware_Major_Version", "Firmware_Minor_Version", "ID", "Min_Position_Limit",
     "Max_Position_Limit", "Homing_Offset", "Operating_Mode", "P_Coefficient", "D_Coefficient",
     "I_Coefficient", "Torque_Enable", "Acceleration", "Goal_Position", "Lock", "Present_Position",
     "Present_Velocity", "Present_Load", "Present_Voltage", "Present_Temperature", "Present_Current",
     "Maximum_Acceleration", "Phase", "Return_Delay_Time", "Max_Torque_Limit", "Protection_Current",
     "Overload_Torque"}))
def test_register_map_agrees_with_lerobot(name: str) -> None:
    from lerobot.motors.feetech.tables import MODEL_CONTROL_TABLE, MODEL_ENCODING_TABLE

    reg = BY_NAME[name]
    assert MODEL_CONTROL_TABLE["sts3215"][name] == (reg.address, reg.size)
    assert MODEL_ENCODING_TABLE["sts3215"].get(name) == reg.sign_bit


def test_register_table_has_no_overlaps() -> None:
    used: dict[int, str] = {}
    for reg in REGISTERS:
        for a in range(reg.address, reg.address + reg.size):
            assert a not in used, f"{reg.name} overlaps {used[a]}"
            used[a] = reg.name


def test_no_health_reply_answers_positions_but_not_health_registers() -> None:
    bus = SimBus()
    bus.servos[3].faults.no_health_reply = True
    assert len(_send(bus, 4, Instruction.READ, bytes((56, 2)))) == 1
    assert _send(bus, 4, Instruction.READ, bytes((60, 4))) == []  # load, voltage, temperature
    replies = _send(bus, BROADCAST_ID, Instruction.SYNC_READ, bytes((60, 4, 3, 4, 5)))
    assert [r[0] for r in replies] == [3, 5]
    assert len(_send(bus, BROADCAST_ID, Instruction.SYNC_READ, bytes((56, 2, 3, 4, 5)))) == 3
