"""The half-duplex bus of six servos: instruction packet in, status packets out (never an echo)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from lepetpal_tui.feetech.protocol import BROADCAST_ID, Instruction, Packet, build_packet, checksum
from lepetpal_tui.feetech.registers import BY_NAME, register_at
from lepetpal_tui.sim.servo import SimServo

_PRESENT_LOAD = BY_NAME["Present_Load"].address  # the health block starts here (load, voltage, temperature)

BYTE_TIME_S = 10 / 1_000_000  # 8N1 at 1 Mbps
RETURN_DELAY_UNIT_S = 2e-6
TRACE_LIMIT = 200_000


@dataclass(frozen=True)
class TraceRecord:
    """One packet (or one servo's part of a sync packet) seen on the bus."""

    t: float  # time.monotonic() in the sim process (same clock as the caller's on Linux)
    direction: str  # "rx": instruction received by the servos; "tx": status sent back
    instruction: str  # PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE, STATUS
    motor_id: int
    register: str | None  # name of the register at `address`, when one starts there
    address: int | None
    values: tuple[int, ...]  # one decoded little-endian value when the data spans one register, else bytes
    error: int = 0  # status packets: error byte


@dataclass(frozen=True)
class Reply:
    """Bytes to send; when they would be complete on a real 1 Mbps wire; extra delay from a fault."""

    data: bytes
    wire_s: float  # from the end of the request's arrival in the pty to the end of this reply
    extra_s: float = 0.0


def _values(address: int | None, data: bytes) -> tuple[int, ...]:
    reg = register_at(address) if address is not None else None
    if reg is not None and reg.size == len(data):
        return (int.from_bytes(data, "little"),)
    return tuple(data)


class SimBus:
    def __init__(self, ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6), trace: bool = False) -> None:
        now = time.monotonic()
        self.servos: list[SimServo] = [SimServo(i, now) for i in ids]
        self.tracing = trace
        self.trace: deque[TraceRecord] = deque(maxlen=TRACE_LIMIT)

    # ---------------------------------------------------------------------------------------------- trace

    def _rec(self, direction: str, instr: str, motor_id: int, address: int | None, data: bytes,
             error: int = 0) -> None:
        if self.tracing:
            reg = register_at(address) if address is not None else None
            self.trace.append(TraceRecord(time.monotonic(), direction, instr, motor_id,
                                          reg.name if reg else None, address, _values(address, data), error))

    # -------------------------------------------------------------------------------------------- servos

    def by_id(self, motor_id: int) -> SimServo | None:
        for s in self.servos:
            if s.motor_id == motor_id:
                return s
        return None

    def advance(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for s in self.servos:
            s.advance(now)

    def _status(self, servo: SimServo, data: bytes, after_s: float, address: int | None = None,
                instr: str = "STATUS") -> Reply | None:
        if servo.faults.silent:
            return None
        if servo.faults.lost_replies > 0:  # a one-off loss (USB noise, a stalled host): the request still acts
            servo.faults.lost_replies -= 1
            return None
        if servo.faults.no_health_reply and address is not None and address >= _PRESENT_LOAD and data:
            return None  # the health registers (load, voltage, temperature) go unanswered
        error = servo.error_byte()
        pkt = build_packet(servo.motor_id, error, data)
        if servo.faults.bad_checksum:
            pkt = pkt[:-1] + bytes(((pkt[-1] + 1) & 0xFF,))
        wire = after_s + servo.get("Return_Delay_Time") * RETURN_DELAY_UNIT_S + len(pkt) * BYTE_TIME_S
        self._rec("tx", instr, servo.motor_id, address, data, error)
        return Reply(pkt, wire, servo.faults.slow_reply_ms / 1000.0)

    # ------------------------------------------------------------------------------------------- packets

    def handle(self, pkt: Packet) -> list[Reply]:
        """Apply one instruction packet; return the status packets, in the order they go on the wire."""
        self.advance()
        wire = len(pkt.raw) * BYTE_TIME_S  # the request itself takes this long to arrive
        try:
            instr = Instruction(pkt.instruction)
        except ValueError:
            return []  # unknown instruction: a real servo stays quiet
        handler = _HANDLERS[instr]
        return handler(self, pkt, wire)

    def _targets(self, motor_id: int) -> list[SimServo]:
        if motor_id == BROADCAST_ID:
            return [s for s in self.servos]
        s = self.by_id(motor_id)
        return [s] if s is not None else []

    def _answers(self, servo: SimServo, instr: Instruction, broadcast: bool) -> bool:
        # Broadcast writes never get a status; level 0 answers only PING and READ.
        if broadcast:
            return False
        return instr in (Instruction.PING, Instruction.READ) or servo.get("Response_Status_Level") >= 1

    def _ping(self, pkt: Packet, wire: float) -> list[Reply]:
        self._rec("rx", "PING", pkt.motor_id, None, b"")
        replies: list[Reply] = []
        # Broadcast ping: every servo answers, in ID order, one after the other on the wire.
        t = wire
        for s in sorted(self._targets(pkt.motor_id), key=lambda s: s.motor_id):
            r = self._status(s, b"", t)
            if r is not None:
                replies.append(r)
                t = r.wire_s
        return replies

    def _read(self, pkt: Packet, wire: float) -> list[Reply]:
        if len(pkt.params) != 2 or pkt.motor_id == BROADCAST_ID:
            return []
        address, length = pkt.params
        self._rec("rx", "READ", pkt.motor_id, address, bytes((length,)))
        s = self.by_id(pkt.motor_id)
        if s is None:
            return []
        r = self._status(s, s.read(address, length), wire, address)
        return [r] if r is not None else []

    def _write(self, pkt: Packet, wire: float) -> list[Reply]:
        if len(pkt.params) < 2:
            return []
        address, data = pkt.params[0], pkt.params[1:]
        self._rec("rx", "WRITE", pkt.motor_id, address, data)
        replies = []
        for s in self._targets(pkt.motor_id):
            s.write(address, data)
            if self._answers(s, Instruction.WRITE, pkt.motor_id == BROADCAST_ID):
                r = self._status(s, b"", wire)
                if r is not None:
                    replies.append(r)
        return replies

    def _reg_write(self, pkt: Packet, wire: float) -> list[Reply]:
        if len(pkt.params) < 2:
            return []
        address, data = pkt.params[0], pkt.params[1:]
        self._rec("rx", "REG_WRITE", pkt.motor_id, address, data)
        replies = []
        for s in self._targets(pkt.motor_id):
            s.pending = (address, bytes(data))
            if self._answers(s, Instruction.REG_WRITE, pkt.motor_id == BROADCAST_ID):
                r = self._status(s, b"", wire)
                if r is not None:
                    replies.append(r)
        return replies

    def _action(self, pkt: Packet, wire: float) -> list[Reply]:
        self._rec("rx", "ACTION", pkt.motor_id, None, b"")
        replies = []
        for s in self._targets(pkt.motor_id):
            if s.pending is not None:
                s.write(*s.pending)
                s.pending = None
            if self._answers(s, Instruction.ACTION, pkt.motor_id == BROADCAST_ID):
                r = self._status(s, b"", wire)
                if r is not None:
                    replies.append(r)
        return replies

    def _sync_read(self, pkt: Packet, wire: float) -> list[Reply]:
        if len(pkt.params) < 2:
            return []
        address, length, ids = pkt.params[0], pkt.params[1], pkt.params[2:]
        self._rec("rx", "SYNC_READ", pkt.motor_id, address, bytes(ids))
        replies = []
        t = wire
        for motor_id in ids:  # replies in request order: the client reads them in that order
            s = self.by_id(motor_id)
            if s is None:
                continue
            r = self._status(s, s.read(address, length), t, address)
            if r is not None:
                replies.append(r)
                t = r.wire_s
        return replies

    def _sync_write(self, pkt: Packet, wire: float) -> list[Reply]:
        if len(pkt.params) < 2:
            return []
        address, length, rest = pkt.params[0], pkt.params[1], pkt.params[2:]
        step = length + 1
        for i in range(0, len(rest) - step + 1, step):
            motor_id, data = rest[i], rest[i + 1 : i + step]
            self._rec("rx", "SYNC_WRITE", motor_id, address, data)
            s = self.by_id(motor_id)
            if s is not None:
                s.write(address, data)
        return []


_HANDLERS = {
    Instruction.PING: SimBus._ping,
    Instruction.READ: SimBus._read,
    Instruction.WRITE: SimBus._write,
    Instruction.REG_WRITE: SimBus._reg_write,
    Instruction.ACTION: SimBus._action,
    Instruction.SYNC_READ: SimBus._sync_read,
    Instruction.SYNC_WRITE: SimBus._sync_write,
}

__all__ = ["BYTE_TIME_S", "Reply", "SimBus", "TraceRecord", "checksum"]
