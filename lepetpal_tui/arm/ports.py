"""Port doctor: list serial ports and find out, without moving anything, what answers on each.

Probing speaks the Feetech protocol-0 packets directly on a pyserial port (ping and read only, never a
write to a servo register), so `lepetpal ports` stays fast: no LeRobot or torch import. The same prober
explains a failed arm handshake (`arm.adapter`), where it waits longer to tell slow replies from silence.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from lepetpal_tui.feetech.protocol import BROADCAST_ID, ErrorBit, Instruction, PacketParser, build_packet
from lepetpal_tui.feetech.registers import BY_NAME, STS3215_MODEL_NUMBER
from lepetpal_tui.joints import JOINT_NAMES
from lepetpal_tui.wire import PortInfo

__all__ = [
    "BAUDRATE",
    "SIM_LINK",
    "SO101_IDS",
    "STS3215_MODEL",
    "BusProbe",
    "PortBusyError",
    "RawBus",
    "Reply",
    "find_so101_port",
    "is_pty",
    "list_ports",
    "open_error_note",
    "port_holders",
    "probe_port",
    "pty_index",
]

SIM_LINK = "/tmp/lepetpal-so101-sim"  # where `lepetpal sim` links its pty by default
SO101_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
STS3215_MODEL = STS3215_MODEL_NUMBER
BAUDRATE = 1_000_000
LEROBOT_REPLY_LIMIT_S = 0.045  # LeRobot gives up on a reply after about 50 ms

# Addresses and error bits from the one register table (feetech/), shared with the simulator.
ADDR_FIRMWARE_MAJOR = BY_NAME["Firmware_Major_Version"].address
ADDR_MODEL = BY_NAME["Model_Number"].address
ADDR_VOLTAGE = BY_NAME["Present_Voltage"].address
ERR_VOLTAGE, ERR_OVERHEAT, ERR_OVERLOAD = ErrorBit.VOLTAGE, ErrorBit.OVERHEAT, ErrorBit.OVERLOAD


class PortBusyError(OSError):
    """Another lepetpal (or a program that locks ports) holds the port."""


def is_pty(device: str) -> bool:
    """A pseudo-terminal: in this project, the simulated arm (a real arm is /dev/ttyACM*, /dev/ttyUSB*)."""
    return os.path.realpath(device).startswith("/dev/pts/")


def open_error_note(device: str, exc: OSError) -> str:
    """What to do about a port that cannot be opened, from its errno."""
    code = exc.errno
    if code == errno.ENOENT or (code is None and not os.path.exists(device)):
        return (
            f"{device} does not exist. Plug the arm's USB cable into this computer, then run "
            "`lepetpal ports` to see which port it appears as and set arm.port (or use --port auto)."
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied on {device}. Add yourself to the serial group and log in again: "
            "`sudo usermod -aG dialout $USER` (uucp on Arch), or install a udev rule such as "
            'SUBSYSTEM=="tty", ATTRS{idVendor}=="1a86", MODE="0666" and replug the arm.'
        )
    if code in (errno.EBUSY, errno.EAGAIN) or isinstance(exc, PortBusyError):
        holders = port_holders(device)
        who = ", ".join(f"PID {pid} ({name})" for pid, name in holders) or "another program"
        return (
            f"{device} is in use by {who}. Close the other program (see `lsof {device}`; "
            "ModemManager sometimes grabs new serial ports) and try again."
        )
    return f"{device} could not be opened ({exc.strerror or exc}). Replug the arm and run `lepetpal ports`."


def not_a_serial_port(device: str) -> str:
    """Why `device` cannot be the arm's serial port when it exists but is no terminal device (/dev/null, a
    regular file, a disk); "" when it is one, or cannot be opened (`open_error_note` says why then)."""
    import termios

    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        termios.tcgetattr(fd)
    except termios.error:
        return (f"{device} is not a serial port. Give the arm's USB serial adapter (such as /dev/ttyACM0, or "
                "its /dev/serial/by-id/ name): `lepetpal ports` lists them and says which one is an SO-101.")
    finally:
        os.close(fd)
    return ""


def pty_index(device: str) -> int | None:
    """N for the pty slave /dev/pts/N (through any symlink), else None."""
    real = os.path.realpath(device)
    head, _, tail = real.rpartition("/")
    return int(tail) if head == "/dev/pts" and tail.isdigit() else None


def _holds_pty_master(fd_path: str, fdinfo_path: str, index: int) -> bool:
    """Whether this fd is the master side (/dev/ptmx) of pty `index`: Linux names it in fdinfo."""
    try:
        if os.path.basename(os.readlink(fd_path)) != "ptmx":
            return False
        with open(fdinfo_path) as fh:
            return any(line.split(":", 1)[0] == "tty-index" and line.split(":", 1)[1].strip() == str(index)
                       for line in fh)
    except (OSError, ValueError):
        return False


def port_holders(device: str, exclude_pids: Iterable[int] = ()) -> list[tuple[int, str]]:
    """Processes that have `device` open (like `lsof`), read from /proc; empty where not permitted.

    On a pty, the process that also holds its master side is the pty's own server (a simulator keeps the
    slave open so the pty survives a client closing it): that one is the arm, not a rival client, and is
    not listed. Any other process with the slave open is."""
    try:
        target = os.stat(os.path.realpath(device))
    except OSError:
        return []
    index = pty_index(device)
    skip = {os.getpid(), *exclude_pids}
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        holds = server = False
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if st.st_rdev == target.st_rdev and st.st_ino == target.st_ino:
                holds = True
            elif index is not None and _holds_pty_master(f"{fd_dir}/{fd}", f"/proc/{entry}/fdinfo/{fd}", index):
                server = True
        if holds and not server:
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    name = fh.read().strip()
            except OSError:
                name = "?"
            found.append((int(entry), name))
    return found


@contextlib.contextmanager
def port_lock(device: str) -> Iterator[int]:
    """Hold an exclusive advisory lock on the port for as long as the block runs.

    Every lepetpal process that talks to an arm takes this lock first, so a second program (or the Port
    pane's probe) never interleaves packets with a running control loop. Opening a bare fd (no termios
    change, no buffer flush) keeps the probe from disturbing whoever holds the port."""
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PortBusyError(errno.EBUSY, f"{device} is locked by another program") from exc
        yield fd
    finally:
        os.close(fd)


def acquire_port_lock(device: str) -> int:
    """Take the port lock and return its fd (close it to release). Raises OSError / PortBusyError."""
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise PortBusyError(errno.EBUSY, f"{device} is locked by another program") from exc
    return fd


# --------------------------------------------------------------------------------------- raw protocol


@dataclass(frozen=True)
class Reply:
    motor_id: int
    status: Literal["ok", "timeout", "corrupt"]
    error: int = 0  # status packet error byte
    data: bytes = b""
    latency_s: float = 0.0


class RawBus:
    """A minimal Feetech protocol-0 client on pyserial, for probing only (ping and read)."""

    def __init__(self, device: str) -> None:
        import serial  # pyserial, light

        self.device = device
        self.ser = serial.Serial(device, BAUDRATE, timeout=0, write_timeout=0.5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ser.close()

    def __enter__(self) -> RawBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collect(self, buf: bytearray, deadline: float) -> bool:
        """Wait for bytes until the deadline; False when it passed with nothing new."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self.ser.fileno()], [], [], remaining)
        if not ready:
            return False
        chunk = self.ser.read(4096)
        buf.extend(chunk)
        return True

    def transact(self, motor_id: int, instruction: int, params: bytes = b"", timeout_s: float = 0.03) -> Reply:
        self.ser.reset_input_buffer()
        t0 = time.monotonic()
        self.ser.write(build_packet(motor_id, instruction, params))
        deadline = t0 + timeout_s
        buf = bytearray()
        parser = PacketParser()
        while self._collect(buf, deadline):
            packets = parser.feed(bytes(buf))
            buf.clear()
            for packet in packets:
                if packet.motor_id == motor_id:
                    return Reply(motor_id, "ok", packet.error, packet.params, time.monotonic() - t0)
        if parser.corrupt or parser.pending:
            return Reply(motor_id, "corrupt", latency_s=time.monotonic() - t0)
        return Reply(motor_id, "timeout", latency_s=timeout_s)

    def ping(self, motor_id: int, timeout_s: float = 0.03) -> Reply:
        return self.transact(motor_id, Instruction.PING, b"", timeout_s)

    def read(self, motor_id: int, address: int, length: int, timeout_s: float = 0.03) -> Reply:
        return self.transact(motor_id, Instruction.READ, bytes([address, length]), timeout_s)

    def broadcast_ping(self, expected: Iterable[int], timeout_s: float = 0.03) -> dict[int, int]:
        """id -> status error byte for every servo that answered a broadcast ping (stops early once all
        `expected` answered)."""
        want = set(expected)
        self.ser.reset_input_buffer()
        self.ser.write(build_packet(BROADCAST_ID, Instruction.PING))
        deadline = time.monotonic() + timeout_s
        buf = bytearray()
        parser = PacketParser()
        found: dict[int, int] = {}
        while self._collect(buf, deadline):
            for packet in parser.feed(bytes(buf)):
                found[packet.motor_id] = packet.error
            buf.clear()
            if want <= set(found):
                break
        return found


def _u16(data: bytes) -> int:
    return data[0] | (data[1] << 8)


# -------------------------------------------------------------------------------------------- probing


@dataclass
class BusProbe:
    """Everything a probe learned about the servos on one port."""

    pings: dict[int, Reply] = field(default_factory=dict)
    models: dict[int, int] = field(default_factory=dict)
    firmware: dict[int, str] = field(default_factory=dict)
    voltages: dict[int, float] = field(default_factory=dict)

    @property
    def answered(self) -> list[int]:
        return sorted(i for i, r in self.pings.items() if r.status == "ok")

    @property
    def missing(self) -> list[int]:
        return [i for i in SO101_IDS if i not in self.answered]

    @property
    def is_so101(self) -> bool:
        return not self.missing and all(self.models.get(i) == STS3215_MODEL for i in SO101_IDS)


def scan(bus: RawBus, *, timeout_s: float = 0.03, thorough: bool = False) -> BusProbe:
    """Find servos 1-6 and read their model numbers and supply voltage. Never writes a register.

    Quick mode (ports listing): one broadcast ping, then single pings only where it makes sense.
    Thorough mode (explaining a failed connect): single pings to every id with `timeout_s`, which the
    caller sets well above LeRobot's 50 ms so that late replies are told from silence, plus firmware."""
    probe = BusProbe()
    if thorough:
        for motor_id in SO101_IDS:
            probe.pings[motor_id] = bus.ping(motor_id, timeout_s)
        # A second chance where others answered: one silent servo among answering ones is as often a reply
        # lost to a stall (a busy computer, USB noise) as a cable. All silent (power off) is not asked twice.
        if any(r.status == "ok" for r in probe.pings.values()):
            for motor_id in [i for i, r in probe.pings.items() if r.status == "timeout"]:
                probe.pings[motor_id] = bus.ping(motor_id, timeout_s)
    else:
        found = bus.broadcast_ping(SO101_IDS, timeout_s)
        for motor_id, err in found.items():
            probe.pings[motor_id] = Reply(motor_id, "ok", err)
        # Some adapters/servos skip broadcast replies: confirm with single pings, but give up quickly on a
        # port where even id 1 is silent (a modem or an unrelated device).
        targets = [i for i in SO101_IDS if i not in found]
        if not found:
            first = bus.ping(SO101_IDS[0], timeout_s)
            probe.pings[first.motor_id] = first
            targets = [i for i in SO101_IDS[1:]] if first.status == "ok" else []
        for motor_id in targets:
            probe.pings[motor_id] = bus.ping(motor_id, timeout_s)
    read_timeout = max(timeout_s, 0.03)
    for motor_id in probe.answered:
        reply = bus.read(motor_id, ADDR_MODEL, 2, read_timeout)
        if reply.status == "ok" and len(reply.data) == 2:
            probe.models[motor_id] = _u16(reply.data)
        if thorough or not probe.voltages:
            volt = bus.read(motor_id, ADDR_VOLTAGE, 1, read_timeout)
            if volt.status == "ok" and volt.data:
                probe.voltages[motor_id] = volt.data[0] / 10.0
        if thorough:
            fw = bus.read(motor_id, ADDR_FIRMWARE_MAJOR, 2, read_timeout)
            if fw.status == "ok" and len(fw.data) == 2:
                probe.firmware[motor_id] = f"{fw.data[0]}.{fw.data[1]}"
    return probe


def probe_port(device: str, timeout_s: float = 0.03) -> PortInfo:
    """Probe one port and describe it; never raises for port problems (they go into `note`)."""
    info = PortInfo(device=device, is_sim=is_pty(device))
    if why := not_a_serial_port(device):
        return replace(info, note=why)
    try:
        with port_lock(device), RawBus(device) as bus:
            probe = scan(bus, timeout_s=timeout_s)
    except OSError as exc:
        return replace(info, note=open_error_note(device, exc))
    ids = tuple(probe.answered)
    models = tuple(probe.models.get(i, 0) for i in ids)
    voltage = min(probe.voltages.values()) if probe.voltages else None
    info = replace(info, probed=True, motor_ids=ids, model_numbers=models, voltage_v=voltage)
    if probe.is_so101:
        return replace(info, is_so101=True, note="simulated SO-101" if info.is_sim else "SO-101 follower")
    if not ids:
        note = "nothing answered at 1 Mbps (not a servo bus, or the arm's power supply is off)"
    elif probe.missing:
        names = ", ".join(f"{i} ({JOINT_NAMES[i - 1]})" for i in probe.missing)
        note = (
            f"servos answer but ids {names} are missing; set ids with "
            f"`lerobot-setup-motors --robot.type=so101_follower --robot.port={device}`"
        )
    else:
        wrong = {i: m for i, m in probe.models.items() if i in SO101_IDS and m != STS3215_MODEL}
        note = f"servos 1-6 answer but model numbers {wrong} are not STS3215 ({STS3215_MODEL})"
    return replace(info, note=note)


def _usb_rows() -> list[PortInfo]:
    from serial.tools import list_ports as lp

    by_id: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/dev/serial/by-id"):
            link = os.path.join("/dev/serial/by-id", name)
            by_id[os.path.realpath(link)] = link
    rows = []
    for p in sorted(lp.comports(), key=lambda p: p.device):
        vid_pid = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else ""
        desc = p.description if p.description and p.description != "n/a" else ""
        rows.append(
            PortInfo(
                device=p.device,
                description=desc,
                vid_pid=vid_pid,
                serial_number=p.serial_number or "",
                by_id=by_id.get(os.path.realpath(p.device), ""),
            )
        )
    return rows


def list_ports(
    probe: bool = True, skip: set[str] | None = None, extra: list[str] | None = None
) -> list[PortInfo]:
    """Serial ports on this computer (plus `extra` paths and a running simulated arm), probed unless
    `probe` is False. Ports in `skip` (e.g. the one the engine is driving) are listed but never opened."""
    skip_real = {os.path.realpath(s) for s in (skip or set())}
    rows = _usb_rows()
    seen = {os.path.realpath(r.device) for r in rows}
    candidates = [*(extra or [])]
    if os.path.exists(SIM_LINK):
        candidates.append(SIM_LINK)
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        sim = is_pty(path)
        rows.append(PortInfo(device=path, description="simulated arm (pty)" if sim else "", is_sim=sim))
    out: list[PortInfo] = []
    for row in rows:
        if os.path.realpath(row.device) in skip_real:
            out.append(replace(row, note="in use by this session (not probed)"))
        elif not probe:
            out.append(row)
        else:
            probed = probe_port(row.device)
            out.append(
                replace(
                    row,
                    probed=probed.probed,
                    is_so101=probed.is_so101,
                    motor_ids=probed.motor_ids,
                    model_numbers=probed.model_numbers,
                    voltage_v=probed.voltage_v,
                    note=probed.note,
                    is_sim=row.is_sim or probed.is_sim,
                )
            )
    return out


def find_so101_port(skip: set[str] | None = None, ports: list[PortInfo] | None = None) -> str:
    """The one real SO-101 on this computer, for arm.port = "auto" (from `ports` when already probed).
    Raises LookupError with a message that says what to do when there is none or more than one (a leader
    arm is an SO-101 too)."""
    if ports is None:
        ports = list_ports(probe=True, skip=skip)
    arms = [p for p in ports if p.is_so101 and not p.is_sim]
    if len(arms) == 1:
        return arms[0].device
    if not arms:
        seen = "; ".join(f"{p.device}: {p.note or 'no SO-101'}" for p in ports) or "no serial ports at all"
        raise LookupError(
            f'arm.port is "auto" but no SO-101 answered on any serial port ({seen}). Check that the arm\'s '
            "power supply is on and its USB cable is plugged in, then run `lepetpal ports`."
        )
    names = ", ".join(p.by_id or p.device for p in arms)
    raise LookupError(
        f'arm.port is "auto" but several SO-101 arms answer ({names}); a leader arm looks the same as a '
        "follower. Set arm.port (or --port) to the follower's port, preferably its /dev/serial/by-id path."
    )
