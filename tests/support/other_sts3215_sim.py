"""A second, independent STS3215 simulator, written for the tests from the protocol, not from our sim.

Nothing from lepetpal_tui is imported: its own framing, its own register memory, its own pty handling.
Like many pty simulators it keeps the slave end open (so the pty survives a client closing it), which
is exactly what made `lepetpal` take it for a rival program holding the port.

    python other_sts3215_sim.py --link /tmp/other-sim    # prints "READY <slave path>" once serving

Six servos, IDs 1-6, model 777. A servo with torque on is at its goal at once.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import tty

HEADER = b"\xff\xff"
BROADCAST = 0xFE
PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
MODEL, TORQUE, GOAL, PRESENT, LOAD, VOLTAGE, TEMPERATURE = 3, 40, 42, 56, 60, 62, 63


def checksum(body: bytes) -> int:
    return ~sum(body) & 0xFF


def status(motor_id: int, data: bytes = b"") -> bytes:
    body = bytes([motor_id, len(data) + 2, 0]) + data
    return HEADER + body + bytes([checksum(body)])


class Servo:
    def __init__(self, motor_id: int) -> None:
        self.mem = bytearray(256)
        self.mem[5] = motor_id
        self.mem[MODEL:MODEL + 2] = (777).to_bytes(2, "little")
        self.mem[0], self.mem[1] = 3, 10  # firmware
        self.mem[GOAL:GOAL + 2] = self.mem[PRESENT:PRESENT + 2] = (2048).to_bytes(2, "little")
        self.mem[VOLTAGE], self.mem[TEMPERATURE] = 121, 31

    def write(self, addr: int, data: bytes) -> None:
        self.mem[addr:addr + len(data)] = data
        if self.mem[TORQUE]:
            self.mem[PRESENT:PRESENT + 2] = self.mem[GOAL:GOAL + 2]


class Bus:
    def __init__(self) -> None:
        self.servos = {i: Servo(i) for i in range(1, 7)}

    def handle(self, motor_id: int, instr: int, p: bytes) -> list[bytes]:
        if instr == PING:
            ids = sorted(self.servos) if motor_id == BROADCAST else [motor_id]
            return [status(i) for i in ids if i in self.servos]
        if instr == READ and motor_id in self.servos:
            addr, n = p[0], p[1]
            return [status(motor_id, bytes(self.servos[motor_id].mem[addr:addr + n]))]
        if instr == WRITE:
            for i in (sorted(self.servos) if motor_id == BROADCAST else [motor_id]):
                if i in self.servos:
                    self.servos[i].write(p[0], p[1:])
            return [status(motor_id)] if motor_id in self.servos else []
        if instr == SYNC_READ:
            addr, n = p[0], p[1]
            return [status(i, bytes(self.servos[i].mem[addr:addr + n])) for i in p[2:] if i in self.servos]
        if instr == SYNC_WRITE:
            addr, n = p[0], p[1]
            for k in range(2, len(p) - n, n + 1):
                if p[k] in self.servos:
                    self.servos[p[k]].write(addr, p[k + 1:k + 1 + n])
            return []
        return []


def packets(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Complete, valid instruction packets at the front of `buf` (consumed); garbage is skipped."""
    out = []
    while True:
        start = buf.find(HEADER)
        if start < 0:
            del buf[:-1]
            return out
        del buf[:start]
        if len(buf) < 4 or len(buf) < 4 + buf[3]:
            return out
        n = buf[3]
        body, chk = bytes(buf[2:3 + n]), buf[3 + n]
        if checksum(body) != chk:
            del buf[:2]
            continue
        out.append((body[0], body[2], body[3:]))
        del buf[:4 + n]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    master, slave = os.openpty()
    tty.setraw(slave)  # kept open for as long as we run
    path = os.ttyname(slave)
    if os.path.lexists(args.link):
        os.unlink(args.link)
    os.symlink(path, args.link)
    print("READY", path, flush=True)
    bus, buf = Bus(), bytearray()
    try:
        while True:
            ready, _, _ = select.select([master, sys.stdin], [], [])
            if sys.stdin in ready and not sys.stdin.buffer.read1(1):
                return 0  # the test closed our stdin: stop
            if master in ready:
                try:
                    buf += os.read(master, 4096)
                except OSError:
                    continue
                for motor_id, instr, params in packets(buf):
                    for reply in bus.handle(motor_id, instr, params):
                        os.write(master, reply)
    finally:
        os.unlink(args.link)


if __name__ == "__main__":
    raise SystemExit(main())
