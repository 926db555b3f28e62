"""Port doctor pieces that need no arm: packet framing, port locking, diagnosis wording, auto-detection."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from lepetpal_tui.arm import ports as P
from lepetpal_tui.arm.adapter import diagnose_probe
from lepetpal_tui.feetech.protocol import Packet, PacketParser, build_packet
from lepetpal_tui.settings import SafetySettings
from lepetpal_tui.wire import PortInfo


def test_ping_packet_matches_the_feetech_checksum() -> None:
    assert build_packet(1, 0x01) == bytes([0xFF, 0xFF, 0x01, 0x02, 0x01, 0xFB])
    assert build_packet(6, 0x02, bytes([56, 2])) == bytes([0xFF, 0xFF, 6, 4, 2, 56, 2, (~(6 + 4 + 2 + 56 + 2)) & 0xFF])


def _status(motor_id: int, error: int, data: bytes = b"") -> bytes:
    body = bytes([motor_id, len(data) + 2, error]) + data
    return b"\xff\xff" + body + bytes([(~sum(body)) & 0xFF])


def _fields(packets: list[Packet]) -> list[tuple[int, int, bytes]]:
    return [(p.motor_id, p.error, p.params) for p in packets]


def test_parse_complete_partial_and_corrupt_status_packets() -> None:
    """The port doctor reads status packets with the simulator's parser (one framing module)."""
    good = _status(3, 0x04, b"\x09\x03")
    parser = PacketParser()
    assert _fields(parser.feed(good + good[:4])) == [(3, 0x04, b"\x09\x03")]
    assert not parser.corrupt and parser.pending  # the partial packet waits for more bytes
    assert _fields(parser.feed(good[4:])) == [(3, 0x04, b"\x09\x03")] and not parser.pending

    bad = bytearray(good)
    bad[-1] ^= 0xFF
    parser = PacketParser()
    assert parser.feed(bytes(bad)) == [] and parser.corrupt

    parser = PacketParser()
    assert _fields(parser.feed(b"\x00\x13" + _status(1, 0))) == [(1, 0, b"")] and parser.corrupt


@pytest.fixture
def pty_path() -> Iterator[str]:
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_port_lock_is_exclusive_and_released(pty_path: str) -> None:
    assert P.is_pty(pty_path)
    with P.port_lock(pty_path), pytest.raises(P.PortBusyError), P.port_lock(pty_path):
        pass
    fd = P.acquire_port_lock(pty_path)
    os.close(fd)
    with P.port_lock(pty_path):  # free again
        pass


def test_probe_of_a_locked_port_is_skipped_with_a_note(pty_path: str) -> None:
    with P.port_lock(pty_path):
        info = P.probe_port(pty_path)
    assert not info.probed and "in use" in info.note


def test_probe_of_a_silent_port_says_nothing_answered(pty_path: str) -> None:
    info = P.probe_port(pty_path)
    assert info.probed and not info.is_so101 and "nothing answered" in info.note


def test_open_error_notes_say_what_to_do() -> None:
    assert "dialout" in P.open_error_note("/dev/ttyACM0", OSError(errno.EACCES, "denied"))
    assert "udev" in P.open_error_note("/dev/ttyACM0", OSError(errno.EACCES, "denied"))
    assert "in use" in P.open_error_note("/dev/null", OSError(errno.EBUSY, "busy"))
    assert "lsof" in P.open_error_note("/dev/null", OSError(errno.EBUSY, "busy"))
    assert "does not exist" in P.open_error_note("/dev/ttyNOPE9", OSError(errno.ENOENT, "missing"))


def _probe(**overrides: P.Reply) -> P.BusProbe:
    probe = P.BusProbe()
    for i in P.SO101_IDS:
        probe.pings[i] = overrides.get(str(i), P.Reply(i, "ok", latency_s=0.001))
        probe.models[i] = P.STS3215_MODEL
        probe.voltages[i] = 12.0
        probe.firmware[i] = "3.10"
    return probe


SAFETY = SafetySettings()


def test_diagnosis_of_a_healthy_bus_finds_nothing() -> None:
    assert diagnose_probe("/dev/x", _probe(), SAFETY) is None


def test_diagnosis_names_missing_ids_and_the_setup_tool() -> None:
    msg = diagnose_probe("/dev/x", _probe(**{"4": P.Reply(4, "timeout")}), SAFETY)
    assert msg is not None
    assert "4 (wrist_flex)" in msg and "lerobot-setup-motors" in msg and "--robot.port=/dev/x" in msg


def test_diagnosis_prefers_the_supply_voltage_over_symptoms() -> None:
    probe = _probe(**{"2": P.Reply(2, "ok", error=P.ERR_VOLTAGE)})
    probe.voltages = {i: 3.9 for i in P.SO101_IDS}
    msg = diagnose_probe("/dev/x", probe, SAFETY)
    assert msg is not None and "3.9 V" in msg and "4.5-13.5 V" in msg


def test_diagnosis_of_a_too_high_voltage() -> None:
    probe = _probe()
    probe.voltages[1] = 16.0
    msg = diagnose_probe("/dev/x", probe, SAFETY)
    assert msg is not None and "16.0 V" in msg and "damages" in msg


def test_diagnosis_reports_wrong_models_and_firmware() -> None:
    probe = _probe()
    probe.models[2] = 1060
    msg = diagnose_probe("/dev/x", probe, SAFETY)
    assert msg is not None and "[1060]" in msg and "777" in msg
    probe = _probe()
    probe.firmware[5] = "3.9"
    msg = diagnose_probe("/dev/x", probe, SAFETY)
    assert msg is not None and "5: 3.9" in msg and "firmware" in msg


def test_auto_detection_refuses_to_guess() -> None:
    arm = PortInfo("/dev/ttyACM0", probed=True, is_so101=True, motor_ids=(1, 2, 3, 4, 5, 6))
    leader = PortInfo("/dev/ttyACM1", probed=True, is_so101=True, by_id="/dev/serial/by-id/usb-leader")
    sim = PortInfo("/dev/pts/3", probed=True, is_so101=True, is_sim=True)
    other = PortInfo("/dev/ttyS0", probed=True, note="nothing answered")
    assert P.find_so101_port(ports=[other, arm, sim]) == "/dev/ttyACM0"
    with pytest.raises(LookupError, match="several SO-101"):
        P.find_so101_port(ports=[arm, leader])
    with pytest.raises(LookupError, match="/dev/ttyS0: nothing answered"):
        P.find_so101_port(ports=[other, sim])  # the simulated arm never counts as "auto"


def test_listing_without_probe_opens_nothing(pty_path: str) -> None:
    with P.port_lock(pty_path):  # a probe would report the lock; a plain listing never opens the port
        rows = P.list_ports(probe=False, extra=[pty_path])
    row = next(r for r in rows if r.device == pty_path)
    assert row.is_sim and not row.probed and row.note == ""
    skipped = next(r for r in P.list_ports(skip={pty_path}, extra=[pty_path]) if r.device == pty_path)
    assert not skipped.probed and "this session" in skipped.note
