"""The simulated arm's own process: a pty that speaks Feetech protocol 0, plus a control channel.

Started by `SimArm.start()` as `python -m lepetpal_tui.sim.server --control-fd N ...` (a subprocess, not
multiprocessing: it also works from daemonic processes and never re-imports the caller's main module).
The control channel is a multiprocessing Connection over an inherited socket. The process exits when
told to stop or when the other end of the channel goes away (its owner died).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import os
import select
import signal
import time
import tty
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from lepetpal_tui.feetech.protocol import ErrorBit, PacketParser
from lepetpal_tui.sim.bus import Reply, SimBus
from lepetpal_tui.sim.servo import ServoFaults, SimServo

IDLE_TICK_S = 0.05  # physics also advances when nobody talks to the bus (temperature, state())


class SimPort:
    """A pseudo-terminal, raw, whose slave side the sim keeps open, plus the optional stable symlink.

    Holding the slave open means a client closing and reopening the port never gives the master a hangup.
    """

    def __init__(self, link_path: str | None) -> None:
        self.link_path = link_path
        self.master = -1
        self.slave = -1
        self.slave_path = ""
        self.plug()

    @property
    def is_open(self) -> bool:
        return self.master >= 0

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline: bytes pass through untouched
        os.set_blocking(self.master, False)
        self.slave_path = os.ttyname(self.slave)
        if self.link_path:
            tmp = f"{self.link_path}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link_path)  # atomic: a reader never sees the link missing

    def unplug(self) -> None:
        """Like pulling the USB cable: the client's next read or write fails and the link disappears."""
        self._remove_link()
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1

    def _remove_link(self) -> None:
        if not self.link_path:
            return
        with contextlib.suppress(OSError):
            if os.readlink(self.link_path) == self.slave_path:
                os.unlink(self.link_path)

    @property
    def path(self) -> str:
        return self.link_path or self.slave_path

    def send(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except BlockingIOError:
            pass  # nobody reads the port and its buffer is full: the bytes are lost, as on a wire
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise


class SimServer:
    def __init__(self, conn: Connection, link_path: str | None, trace: bool, wire_time: bool) -> None:
        self.conn = conn
        self.bus = SimBus(trace=trace)
        self.port = SimPort(link_path)
        self.wire_time = wire_time
        self.parser = PacketParser()
        self.running = True
        # Replies waiting for their time on the wire: (due, sequence, bytes). A late (slow_reply) answer
        # must not hold up the other servos, so nothing here sleeps.
        self.outbox: list[tuple[float, int, bytes]] = []
        self._seq = 0

    # ---------------------------------------------------------------------------------------- main loop

    def serve(self) -> None:
        self.conn.send(("ready", self.port.path, self.port.slave_path))
        try:
            while self.running:
                fds: list[Any] = [self.conn]
                if self.port.is_open:
                    fds.append(self.port.master)
                timeout = IDLE_TICK_S
                if self.outbox:
                    timeout = max(0.0, min(timeout, self.outbox[0][0] - time.monotonic()))
                ready, _, _ = select.select(fds, [], [], timeout)
                if self.port.is_open and self.port.master in ready:
                    self._on_bytes()
                self._flush_due()
                if self.conn in ready:
                    self._on_command()
                if not ready:
                    self.bus.advance()
        finally:
            self.port.unplug()

    def _on_bytes(self) -> None:
        try:
            data = os.read(self.port.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # EIO: no client has the slave open right now
        arrived = time.monotonic()
        for pkt in self.parser.feed(data):
            for reply in self.bus.handle(pkt):
                self._send(reply, arrived)

    def _send(self, reply: Reply, arrived: float) -> None:
        delay = (reply.wire_s if self.wire_time else 0.0) + reply.extra_s
        if delay <= 0 and not self.outbox:
            self.port.send(reply.data)
            return
        self._seq += 1
        heapq.heappush(self.outbox, (arrived + delay, self._seq, reply.data))

    def _flush_due(self) -> None:
        now = time.monotonic()
        while self.outbox and self.outbox[0][0] <= now:
            _, _, data = heapq.heappop(self.outbox)
            if self.port.is_open:
                self.port.send(data)

    # ------------------------------------------------------------------------------------------ control

    def _on_command(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.running = False  # the owner is gone
            return
        name, args = msg[0], msg[1:]
        handler = self._handlers().get(name)
        if handler is None:
            self.conn.send(("error", f"ValueError: unknown simulator command {name!r}"))
            return
        try:
            result = handler(*args)
        except Exception as exc:  # reported to the caller, who raises it
            self.conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        self.conn.send(("ok", result))

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        """The control channel's commands (`SimArm` sends their names): an explicit table, so an unknown
        name is an error the caller sees, not an attribute lookup."""
        return {
            "state": self.cmd_state, "move_by_hand": self.cmd_move_by_hand, "trace": self.cmd_trace,
            "clear_trace": self.cmd_clear_trace, "set_tracing": self.cmd_set_tracing,
            "set_fault": self.cmd_set_fault, "clear_faults": self.cmd_clear_faults,
            "set_limp_goal_kept": self.cmd_set_limp_goal_kept, "slave_path": self.cmd_slave_path,
            "stop": self.cmd_stop,
        }

    def cmd_state(self) -> dict[int, dict[str, Any]]:
        self.bus.advance()
        return {s.motor_id: s.state() for s in self.bus.servos}

    def cmd_move_by_hand(self, motor_id: int, actual: int) -> None:
        self.bus.advance()
        self._servo(motor_id).move_by_hand(actual)

    def cmd_trace(self, clear: bool) -> list[Any]:
        records = list(self.bus.trace)
        if clear:
            self.bus.trace.clear()
        return records

    def cmd_clear_trace(self) -> None:
        self.bus.trace.clear()

    def cmd_set_tracing(self, on: bool) -> None:
        self.bus.tracing = on

    def cmd_set_fault(self, kind: str, motor_id: int | None, value: float | None) -> str:
        self.bus.advance()
        if kind == "unplug":
            self.port.unplug()
            self.outbox.clear()
            return self.port.path
        for s in self._servos(motor_id):
            f = s.faults
            if kind == "silent":
                f.silent = True
            elif kind == "no_health_reply":
                f.no_health_reply = True
            elif kind == "overheat":
                f.error_bits |= ErrorBit.OVERHEAT
                f.temperature_c = value if value is not None else s.get("Max_Temperature_Limit") + 5.0
            elif kind == "overload":
                f.error_bits |= ErrorBit.OVERLOAD
                s.write(40, b"\x00")  # overload protection drops the torque
            elif kind == "voltage":
                f.error_bits |= ErrorBit.VOLTAGE
            elif kind == "slow_reply":
                f.slow_reply_ms = value if value is not None else 100.0
            elif kind == "bad_checksum":
                f.bad_checksum = True
            elif kind == "low_voltage":
                f.voltage_v = value if value is not None else 6.0
            elif kind == "wrong_model":
                f.model_number = int(value) if value is not None else 2825  # an STS3250
            elif kind == "firmware":
                f.firmware_minor = int(value) if value is not None else 9
            elif kind == "lost_reply":
                f.lost_replies = int(value) if value is not None else 1
            else:
                raise ValueError(f"unknown fault kind {kind!r}")
        return self.port.path

    def cmd_clear_faults(self) -> str:
        """Clear every fault; after an unplug, plug back in (a new pty, the link points at it)."""
        for s in self.bus.servos:
            s.faults = ServoFaults()
        if not self.port.is_open:
            self.port.plug()
            self.parser = PacketParser()
        return self.port.path

    def cmd_set_limp_goal_kept(self, on: bool) -> None:
        self.bus.advance()
        for s in self.bus.servos:
            s.limp_goal_kept = bool(on)

    def cmd_slave_path(self) -> str:
        return self.port.slave_path

    def cmd_stop(self) -> None:
        self.running = False

    def _servo(self, motor_id: int) -> SimServo:
        s = self.bus.by_id(motor_id)
        if s is None:
            raise ValueError(f"no servo with ID {motor_id} (IDs: {[x.motor_id for x in self.bus.servos]})")
        return s

    def _servos(self, motor_id: int | None) -> list[SimServo]:
        return list(self.bus.servos) if motor_id is None else [self._servo(motor_id)]


# The simulator stands for servos, which answer without waiting for a CPU. LeRobot's bus client spins
# while it waits for their reply, in the engine's actuator thread at nice -10: a simulator at nice 0
# then waits behind any busy process for a slice of CPU while the client spins (a priority inversion:
# tick work p50 7.4 ms on the 2-core AVX2 EPYC with a busy UI, the sim's own cycle being ~1.7 ms).
# The same priority as the actuator, where allowed; without permission nothing changes.
SIM_NICE = -10


def raise_priority() -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, SIM_NICE)
    except (OSError, AttributeError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="simulated SO-101 process (started by SimArm.start)")
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--link")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--wire-time", action="store_true")
    args = p.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the owner decides when the sim stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_priority()
    conn = Connection(args.control_fd)
    try:
        server = SimServer(conn, args.link, args.trace, args.wire_time)
    except OSError as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    server.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
