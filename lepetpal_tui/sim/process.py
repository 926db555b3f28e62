"""`SimArm`: start, drive and stop the simulated SO-101 from any process.

    with SimArm.start(link_path="/tmp/so101", trace=True) as sim:
        robot = SO101Follower(SO101FollowerConfig(port=sim.port, ...))

The arm runs in its own process (in-process, LeRobot's busy-polling reads would starve it of the GIL).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self

from lepetpal_tui.sim.bus import TraceRecord
from lepetpal_tui.sim.servo import FAULT_KINDS

START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0  # for the control lock, then for the process to exit after "stop"


class SimError(RuntimeError):
    """The simulated arm could not start or stopped answering its control channel."""


class SimArm:
    """Handle on a running simulated arm. Methods are thread-safe."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection, port: str, slave_path: str,
                 link_path: str | None) -> None:
        self._proc = proc
        self._conn = conn
        self._lock = threading.Lock()
        self._port = port
        self._slave_path = slave_path
        self.link_path = link_path
        self._stopped = False
        atexit.register(self.stop)

    # ---------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        link_path: str | None = None,
        trace: bool = False,
        wire_time: bool = False,
        log_path: str | None = None,
    ) -> SimArm:
        """Start six STS3215 servos (IDs 1-6) on a new pty; returns once the port accepts connections.

        `link_path`: also keep a symlink there to the pty (replaced if it is a stale link).
        `trace`: record every packet (see `trace()`). `wire_time`: answer as late as a 1 Mbps bus would.
        `log_path`: append the sim process's stdout and stderr there instead of the caller's terminal.
        """
        if link_path is not None and os.path.lexists(link_path) and not os.path.islink(link_path):
            raise SimError(
                f"Cannot create the simulated arm's link at {link_path}: a file that is not a symlink is "
                "already there. Choose another path (--link) or remove that file."
            )
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "lepetpal_tui.sim.server", "--control-fd", str(theirs.fileno())]
        if link_path is not None:
            cmd += ["--link", os.path.abspath(link_path)]
        if trace:
            cmd.append("--trace")
        if wire_time:
            cmd.append("--wire-time")
        try:
            # Under a full-screen UI the sim must not write to the terminal: send its output to a file.
            out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
            try:
                proc = subprocess.Popen(
                    cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
            finally:
                if out is not None:
                    out.close()
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        if not conn.poll(START_TIMEOUT_S):
            proc.kill()
            proc.wait()
            conn.close()
            raise SimError(f"The simulated arm did not start within {START_TIMEOUT_S:.0f} s.")
        try:
            msg = conn.recv()
        except EOFError:
            proc.wait()
            conn.close()
            raise SimError(f"The simulated arm exited at start (exit code {proc.returncode}).") from None
        if msg[0] != "ready":
            proc.wait()
            conn.close()
            raise SimError(f"The simulated arm could not start: {msg[1]}")
        _, port, slave = msg
        return cls(proc, conn, port, slave, os.path.abspath(link_path) if link_path else None)

    def stop(self) -> None:
        """Stop the sim process and remove its link. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        # Bounded whatever state the channel is in: a call cut short (a signal inside it) may still hold
        # the lock or have left half a reply unread. The process's exit is the answer waited for.
        if self._lock.acquire(timeout=STOP_TIMEOUT_S):
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
            finally:
                self._lock.release()
        try:
            self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()
        self._remove_link()

    def _remove_link(self) -> None:
        """The process removes its link as it stops; one killed instead leaves it: remove it here if it
        still points at this sim's pty (a link another sim made since is left alone)."""
        link = self.link_path
        try:
            if link is not None and os.path.islink(link) and os.readlink(link) == self._slave_path:
                os.unlink(link)
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def is_alive(self) -> bool:
        return not self._stopped and self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    # --------------------------------------------------------------------------------------------- port

    @property
    def port(self) -> str:
        """The serial port to open: the stable link when one was asked for, else the pty slave."""
        return self.link_path or self._slave_path

    @property
    def pty_path(self) -> str:
        return self._slave_path

    # ------------------------------------------------------------------------------------------ control

    def _call(self, *msg: Any) -> Any:
        if self._stopped:
            raise SimError("The simulated arm was stopped.")
        with self._lock:
            try:
                self._conn.send(msg)
                if not self._conn.poll(CALL_TIMEOUT_S):
                    raise SimError(f"The simulated arm did not answer {msg[0]!r} within {CALL_TIMEOUT_S} s.")
                status, result = self._conn.recv()
            except (OSError, EOFError) as exc:
                raise SimError(f"The simulated arm process is gone ({exc}).") from exc
        if status != "ok":
            raise SimError(str(result))
        return result

    def move_by_hand(self, motor_id: int, actual_position: int) -> None:
        """Turn a servo's horn by hand to raw encoder position `actual_position` (0..4095)."""
        self._call("move_by_hand", motor_id, actual_position)

    def set_fault(self, kind: str, motor_id: int | None = None, value: float | None = None) -> None:
        """Inject a fault on one servo (or all when `motor_id` is None). See FAULT_KINDS.

        silent: stops answering. no_health_reply: answers everything but reads of the health registers
        (Present_Load and after: load, voltage, temperature). overheat/overload/voltage: that error bit in every status packet
        (overheat also reports `value` degrees C; overload also drops the torque). slow_reply: answers
        `value` ms late (default 100). bad_checksum: corrupt status packets. unplug: the pty closes and
        the link disappears (`clear_faults()` plugs back in). low_voltage: Present_Voltage = `value` volts
        (default 6.0). wrong_model: Model_Number = `value` (default 2825). firmware: minor version `value`.
        lost_reply: the next `value` status packets (default 1) are lost, as on a noisy cable or a stalled
        computer; the requests still act.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}; use one of: {', '.join(FAULT_KINDS)}.")
        self._call("set_fault", kind, motor_id, value)

    def set_limp_goal_kept(self, on: bool) -> None:
        """Model the goal register as a real STS3215 does while torque is off (`on`): it keeps the last
        goal written, and the servo drives there the moment torque comes back, so re-arming in the wrong
        order (torque before goal) makes the arm jump. Off (the default): the goal follows the limp arm."""
        self._call("set_limp_goal_kept", on)

    def clear_faults(self) -> None:
        """Clear every fault. After an unplug, plugs back in: a new pty, the link points at it again."""
        self._slave_path = self._call("clear_faults") and self._call("slave_path")

    def trace(self) -> list[TraceRecord]:
        """Every packet recorded since the start or the last clear (only when started with trace=True)."""
        return list(self._call("trace", False))

    def drain_trace(self) -> list[TraceRecord]:
        """`trace()` and `clear_trace()` in one step, so that no record falls between the two."""
        return list(self._call("trace", True))

    def clear_trace(self) -> None:
        self._call("clear_trace")

    def set_tracing(self, on: bool) -> None:
        self._call("set_tracing", on)

    def state(self) -> dict[int, dict[str, Any]]:
        """Per servo ID: goal, present, actual, torque, temperature, load, voltage, current, limits, ..."""
        return dict(self._call("state"))


__all__ = ["FAULT_KINDS", "SimArm", "SimError", "TraceRecord"]
