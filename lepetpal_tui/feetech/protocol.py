"""Feetech protocol 0 framing, the one copy: checksums, building packets, splitting a byte stream.

Packet: FF FF ID LEN INSTR PARAMS CHK with CHK = ~(ID + LEN + INSTR + sum(PARAMS)) & 0xFF and
LEN = len(PARAMS) + 2. A status packet has the error byte where the instruction was, so one parser
reads both: the simulator parses instruction packets with it, the port doctor status packets.
No LeRobot here: the simulator must not share a bug with the client it stands in for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

BROADCAST_ID = 0xFE
HEADER = b"\xff\xff"


class Instruction(IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83


class ErrorBit(IntEnum):
    """Bits of the status packet's error byte (scservo_sdk's ERRBIT_*)."""

    VOLTAGE = 0x01
    ANGLE = 0x02
    OVERHEAT = 0x04
    OVERCURRENT = 0x08
    OVERLOAD = 0x20


def checksum(body: bytes | bytearray) -> int:
    """Checksum over ID, LEN, INSTR/ERR and parameters (everything between header and checksum)."""
    return ~sum(body) & 0xFF


def build_packet(motor_id: int, code: int, params: bytes | bytearray = b"") -> bytes:
    """An instruction (code = instruction) or status (code = error byte) packet."""
    body = bytes((motor_id, len(params) + 2, code)) + bytes(params)
    return HEADER + body + bytes((checksum(body),))


@dataclass(frozen=True)
class Packet:
    motor_id: int
    instruction: int  # the error byte, in a status packet
    params: bytes
    raw: bytes

    @property
    def error(self) -> int:
        return self.instruction


class PacketParser:
    """Splits a byte stream into packets; drops noise and packets with a bad checksum.

    A real servo resynchronises on the next FF FF header, so the parser does the same. `bad_checksums`
    and `noise_bytes` count what was dropped (the port doctor calls a reply with either "corrupt").
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_checksums = 0
        self.noise_bytes = 0

    @property
    def pending(self) -> bool:
        """Bytes of an incomplete packet are waiting for the rest."""
        return bool(self._buf)

    @property
    def corrupt(self) -> bool:
        """Anything but clean packets (and a partial one still waiting) was seen."""
        return bool(self.bad_checksums or self.noise_bytes)

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        buf = self._buf
        while True:
            start = buf.find(HEADER)
            if start < 0:
                # Keep a trailing FF: it may be the first half of a header.
                keep = 1 if buf.endswith(b"\xff") else 0
                self.noise_bytes += len(buf) - keep
                del buf[: len(buf) - keep]
                return out
            if start:
                self.noise_bytes += start
                del buf[:start]
            # FF FF FF ID ...: the extra FF is noise.
            while len(buf) > 2 and buf[2] == 0xFF:
                self.noise_bytes += 1
                del buf[0]
            if len(buf) < 4:
                return out
            length = buf[3]
            if length < 2:
                self.noise_bytes += 2
                del buf[:2]
                continue
            total = length + 4
            if len(buf) < total:
                return out
            raw = bytes(buf[:total])
            if raw[-1] != checksum(raw[2:-1]):
                self.bad_checksums += 1
                del buf[:2]
                continue
            del buf[:total]
            out.append(Packet(raw[2], raw[4], raw[5:-1], raw))
