"""Run the engine in its own process and talk to it from the UI (or `lepetpal run`).

Why a process: a busy Textual UI in the same interpreter delays ticks by 8-17 ms at p99 (GIL). The child
owns the arm, cameras and policy (torch and lerobot are imported only there); the parent sends `Command`s
and receives `TelemetryBatch`es over one duplex pipe.

Safety: the child reads commands on a dedicated thread, so an e-stop is applied even while the arm is
connecting or the policy is loading. When the UI says goodbye (`ui_lost`: its terminal hung up, it
crashed), the pipe reaches EOF (the parent exited or was killed) or the parent pid changes, the child
holds the arm at once and disconnects after `safety.ui_lost_disconnect_s`.

The child runs in its own session, so the terminal's signals (a hangup, Ctrl-C) never reach it or the
simulated arm it starts for `arm.port = "sim"`: their lifetime follows the pipe and the engine's own
shutdown, never the terminal's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepetpal_tui.config import Settings
from lepetpal_tui.core.types import (
    ActionChunk,
    Command,
    EngineEvent,
    EngineState,
    Observation,
    TelemetryBatch,
)

if TYPE_CHECKING:
    from lepetpal_tui.core.engine import Engine


class EngineStartError(Exception):
    """The engine process could not be started; the message says what to do."""


def session_log_path(settings: Settings) -> Path:
    folder = Path(settings.logging.dir).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"session-{stamp}-{os.getpid()}-{int(time.time() * 1000) % 1000:03d}.jsonl"


SIM_LOG = "lepetpal-sim.log"  # in the temp folder: the simulated arm's own output


class OwnedSim:
    """The simulated arm an engine starts for itself (arm.port = "sim" and no port given).

    Started on the engine's setup thread when the arm connects, stopped by `_child_main` once the engine
    has disconnected, so the arm outlives the UI for as long as the engine holds it."""

    def __init__(self) -> None:
        self.sim: Any = None

    def start(self) -> str:
        import tempfile

        from lepetpal_tui.sim.process import SimArm

        if self.sim is None:
            self.sim = SimArm.start(log_path=os.path.join(tempfile.gettempdir(), SIM_LOG))
        return str(self.sim.port)

    def stop(self) -> None:
        if self.sim is not None:
            with contextlib.suppress(Exception):
                self.sim.stop()


def build_engine(
    settings: Settings,
    sim_port: str | None,
    on_telemetry: Any = None,
    log_path: Path | None = None,
    owned_sim: OwnedSim | None = None,
) -> Engine:
    """An Engine wired to the real parts: Arm (LeRobot), load_policy, open_camera. Imports them lazily.

    With arm.port = "sim": the simulated arm at `sim_port`, else one started through `owned_sim`."""
    from lepetpal_tui.core.engine import Engine
    from lepetpal_tui.core.telemetry import SessionLog

    def arm_factory() -> Any:
        from lepetpal_tui.core.arm import Arm

        port = settings.arm.port
        if port == "sim":
            if sim_port:
                port = sim_port
            elif owned_sim is not None:
                port = owned_sim.start()
            else:
                raise RuntimeError('arm.port is "sim" but no simulated arm was started (launcher bug)')
        elif port == "auto":
            from lepetpal_tui.core.ports import find_so101_port

            port = find_so101_port()
        return Arm(settings.arm, port, settings.safety, is_sim=settings.is_sim)

    def policy_factory(on_status: Any, cancel: threading.Event) -> Any:
        if settings.model.mode == "scripted":  # microseconds per chunk: no need for its own process
            from lepetpal_tui.core.policy import load_policy

            return load_policy(settings.model, settings.cameras, settings.arm.units, on_status, cancel,
                               rate_hz=settings.control.rate_hz)
        return spawn_policy_process(settings, on_status, cancel)

    def camera_factory(on_event: Any) -> dict[str, Any]:
        from lepetpal_tui.core.camera import open_camera

        fallback = settings.safety.camera_fallback_synthetic
        return {name: open_camera(name, cs, on_event, fallback_synthetic=fallback)
                for name, cs in settings.cameras.items()}

    log = SessionLog(log_path, settings, log_ticks=settings.logging.log_ticks) if log_path else None
    from lepetpal_tui.record.feed import RecordFeed

    recorder = RecordFeed(settings, session_log=str(log_path or ""))  # the process starts when recording is on
    engine = Engine(
        settings,
        arm_factory=arm_factory,
        policy_factory=policy_factory,
        camera_factory=camera_factory,
        on_telemetry=on_telemetry,
        session_log=log,
        recorder=recorder,
    )
    recorder.attach(lambda: engine.cameras, engine._event_obj)
    return engine


# ------------------------------------------------------------------------------------ policy process


# The policy process's environment, set before torch is imported. OpenMP workers that spin while
# waiting steal the CPU the control loop and the bus need on a small machine (tiny SmolVLA next to the
# loop with a busy UI on 2 cores: chunk p50 355 ms spinning vs 36 ms passive). bench/policy_latency.py
# measures the chunk time in this setting too.
POLICY_PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

# The policy process runs at a lower CPU priority (nice +10; LEPETPAL_POLICY_NICE overrides, 0 = off):
# on a 2-core machine inference keeps both cores busy, and the bus (the serial driver, or the simulator
# that stands for the servos) and the actuator thread must win every time they wake. Lowering our own
# priority needs no permission; CFS then gives inference the cores only when nobody else wants them.
POLICY_NICE_DEFAULT = 10


def lower_policy_priority() -> int:
    """Apply the policy process's niceness; returns the increment applied (0 when off or refused)."""
    try:
        increment = int(os.environ.get("LEPETPAL_POLICY_NICE", POLICY_NICE_DEFAULT))
    except ValueError:
        increment = POLICY_NICE_DEFAULT
    if increment <= 0:
        return 0
    try:
        os.nice(increment)
    except OSError:
        return 0
    return increment


class PolicyProcessError(RuntimeError):
    """The policy process failed to load or to infer; the message says why (and the fix when known)."""


def _policy_main(conn: Connection, settings: Settings) -> None:
    """Load the policy and serve `infer` requests, in its own process (its own GIL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name, value in POLICY_PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    lower_policy_priority()
    from lepetpal_tui.core.policy import load_policy

    try:
        policy = load_policy(settings.model, settings.cameras, settings.arm.units,
                             lambda st: conn.send(("status", st)), None, rate_hz=settings.control.rate_hz)
    except Exception as exc:
        fix = getattr(exc, "fix", "")
        with contextlib.suppress(OSError):
            conn.send(("error", f"{getattr(exc, 'message', None) or exc}", fix))
        return
    conn.send(("ready", policy.chunk_length, getattr(policy, "name", "policy")))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the engine is gone
        try:
            if msg[0] == "infer":
                conn.send(("chunk", policy.infer(msg[1])))
            elif msg[0] == "reset":
                policy.reset()
            else:
                return
        except (EOFError, OSError):
            return
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", ""))


class RemotePolicy:
    """The engine's handle on the policy process; `infer` blocks in a pipe read (no GIL held)."""

    def __init__(self, process: BaseProcess, conn: Connection, chunk_length: int, name: str) -> None:
        self._process = process
        self._conn = conn
        self._lock = threading.Lock()
        self.chunk_length = chunk_length
        self.name = name

    def infer(self, obs: Observation) -> ActionChunk:
        with self._lock:
            try:
                self._conn.send(("infer", obs))
                reply = self._conn.recv()
            except (EOFError, OSError):
                raise PolicyProcessError("the policy process exited; restart to reload it") from None
        if reply[0] != "chunk":
            raise PolicyProcessError(str(reply[1]))
        chunk: ActionChunk = reply[1]
        return chunk

    def reset(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._conn.send(("reset",))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(("quit",))
        self._process.join(2.0)
        if self._process.is_alive():
            self._process.terminate()
        with contextlib.suppress(Exception):
            self._conn.close()


def spawn_policy_process(settings: Settings, on_status: Any, cancel: threading.Event) -> RemotePolicy:
    """Load the policy in its own process, relaying its ModelStatus stream.

    Why: inference holds the GIL for much of its Python-side work, and LeRobot's bus client busy-polls
    the serial port in Python; sharing one interpreter, each tick's bus transaction waited for the GIL
    again and again (tick work 7.6 ms p50 instead of ~1 ms measured on this 2-core machine).
    """
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_policy_main, args=(child, settings), name="lepetpal-policy", daemon=True)
    proc.start()
    child.close()
    while True:
        if cancel.is_set():
            proc.terminate()
            raise PolicyProcessError("policy loading cancelled")
        try:
            if not conn.poll(0.1):
                if not proc.is_alive():
                    raise PolicyProcessError(f"the policy process exited while loading (code {proc.exitcode})")
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            raise PolicyProcessError("the policy process exited while loading") from None
        if msg[0] == "status":
            on_status(msg[1])
        elif msg[0] == "ready":
            return RemotePolicy(proc, conn, int(msg[1]), str(msg[2]))
        else:
            proc.join(2.0)
            raise PolicyProcessError(f"{msg[1]} {msg[2]}".strip())


# ------------------------------------------------------------------------------------------ child side


def engine_output_path(log_path: Path) -> Path:
    """Where the engine process's stdout/stderr go (beside the session log)."""
    return log_path.with_suffix(".engine.log")


def _redirect_output(path: Path) -> None:
    """Send fds 1 and 2 (and so the policy process's) to a file: the engine shares the terminal with a
    full-screen UI, and a stray warning from torch or LeRobot would garble it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return  # keep the terminal rather than fail to start
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _leave_terminal() -> None:
    """Put this process in its own session, away from the UI's terminal.

    A hangup (SSH dropped, `tmux kill-session`) sends SIGHUP to the terminal's session leader, and when
    that dies, to its whole foreground process group: the engine, its policy process and the simulated
    arm died with the UI, mid-tick, and the dead-man path never ran. In a session of its own no terminal
    signal reaches the engine (nor the processes it starts); it stops when the UI's pipe says so."""
    with contextlib.suppress(OSError):  # already a session leader: nothing to leave
        os.setsid()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # belt and braces: a stray `kill -HUP` too
    # Ctrl-C in the terminal signals the whole process group: the parent decides how to stop (it sends
    # quit); the engine must not die mid-tick with the arm under torque and its log half written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # stdin was the terminal; nothing here reads it
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)


def _child_main(conn: Connection, settings: Settings, sim_port: str | None, log_path: str) -> None:
    _leave_terminal()
    _redirect_output(engine_output_path(Path(log_path)))
    # A shorter GIL switch interval bounds how long Python work in other threads (pre/post-processing,
    # telemetry) can delay a tick.
    sys.setswitchinterval(0.001)
    # SIGTERM (a service manager, `kill`): stop like quit does: hold, then disconnect.
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
    parent = os.getppid()
    send_lock = threading.Lock()

    def send(batch: TelemetryBatch) -> None:
        with send_lock:
            conn.send(batch)

    owned_sim = OwnedSim()
    engine = build_engine(settings, sim_port, send, Path(log_path), owned_sim)
    engine.start()

    lost = threading.Event()

    def read_commands() -> None:
        from lepetpal_tui.core.engine import raise_thread_priority

        raise_thread_priority()  # an e-stop must not wait for a CPU behind inference
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(cmd, Command):
                if cmd.kind == "ui_lost":
                    lost.set()
                engine.submit(cmd)
        if not engine.finished:
            lost.set()
            engine.ui_lost("its pipe closed without a quit: the UI process exited, crashed or was killed")

    threading.Thread(target=read_commands, name="engine-commands", daemon=True).start()
    while not engine.join(0.05):
        if terminated.is_set():
            terminated.clear()
            engine.submit(Command("quit"))
        # Belt and braces: a parent that died without closing the pipe (it was inherited elsewhere).
        if not lost.is_set() and os.getppid() != parent:
            lost.set()
            engine.ui_lost(f"the UI process {parent} is gone (the engine has a new parent)")
    engine.flush_telemetry()
    close_recorder = getattr(engine.recorder, "close", None)
    if callable(close_recorder):
        close_recorder()  # the open episode is saved (or discarded) per [recording] on_quit
    owned_sim.stop()  # only now: the engine has held and disconnected the arm
    with contextlib.suppress(Exception):
        conn.close()


# ----------------------------------------------------------------------------------------- parent side


class EngineClient:
    """Handle on an engine process. Use from one thread (the UI's worker); `send` is thread-safe."""

    def __init__(self, process: BaseProcess, conn: Connection, log_path: Path) -> None:
        self._process = process
        self._conn = conn
        self._send_lock = threading.Lock()
        self.log_path = log_path
        self._closed = False
        self._pending: list[TelemetryBatch] = []

    @classmethod
    def spawn(cls, settings: Settings, sim_port: str | None = None) -> EngineClient:
        """Start the engine process; returns at once (state and model progress arrive via `poll`).

        With arm.port = "sim" the engine drives the simulated arm at `sim_port`, or, when none is given,
        starts its own (which then lives exactly as long as the engine)."""
        ctx = mp.get_context("spawn")  # torch/lerobot load in the child only; no forked threads
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        log_path = session_log_path(settings)
        proc = ctx.Process(
            target=_child_main,
            args=(child_conn, settings, sim_port, str(log_path)),
            name="lepetpal-engine",
            daemon=False,  # must outlive a killed parent long enough to hold and disconnect
        )
        proc.start()
        child_conn.close()  # else our copy keeps the pipe open and the child never sees EOF
        return cls(proc, parent_conn, log_path)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def send(self, cmd: Command) -> None:
        """Queue a command for the engine; never blocks on the engine's work."""
        if cmd.sent_at == 0.0:
            cmd = dataclasses.replace(cmd, sent_at=time.monotonic())
        with self._send_lock:
            try:
                self._conn.send(cmd)
            except (OSError, ValueError) as exc:
                # Never raise into the UI: the next poll reports it.
                self._pending.append(
                    TelemetryBatch(
                        state=EngineState.ERROR,
                        hold_reason="engine process gone",
                        events=[EngineEvent(time.monotonic(), "error",
                                            f'The engine process is gone ({exc}); "{cmd.kind}" was not delivered.',
                                            f"Restart lepetpal. The session log is {self.log_path}; the engine's "
                                            f"own output is in {engine_output_path(self.log_path)}.")],
                    )
                )

    def poll(self, timeout: float = 0.0) -> list[TelemetryBatch]:
        """Every batch received so far, waiting up to `timeout` for the first."""
        out, self._pending = self._pending, []
        if out:
            return out
        try:
            if not self._conn.poll(timeout):
                return out
            while True:
                item = self._conn.recv()
                if isinstance(item, TelemetryBatch):
                    out.append(item)
                if not self._conn.poll(0):
                    break
        except (EOFError, OSError):
            pass
        return out

    def abandon(self, reason: str) -> None:
        """The UI is going away without a quit (its terminal hung up, it crashed): tell the engine why and
        let go. The engine holds the arm and disconnects per [safety], as if the UI had been killed."""
        if self._closed:
            return
        self._closed = True
        self.send(Command("ui_lost", reason=reason))
        with contextlib.suppress(Exception):
            self._conn.close()

    def close(self, go_home: bool = False, timeout: float = 5.0) -> list[TelemetryBatch]:
        """Ask the engine to quit (hold, optionally home, disconnect) and wait; returns the last batches.

        After `timeout` (plus the home motion when asked) the process is terminated."""
        if self._closed:
            return []
        self._closed = True
        batches: list[TelemetryBatch] = []
        self.send(Command("quit", go_home=go_home))
        deadline = time.monotonic() + timeout + (30.0 if go_home else 0.0)
        while self._process.is_alive() and time.monotonic() < deadline:
            batches.extend(self.poll(0.05))
        batches.extend(self.poll(0))
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(2.0)
            batches.append(
                TelemetryBatch(
                    state=EngineState.ERROR,
                    events=[EngineEvent(time.monotonic(), "error", "The engine did not stop in time; terminated.")],
                )
            )
        self._process.join(1.0)
        with contextlib.suppress(Exception):
            self._conn.close()
        out = engine_output_path(self.log_path)
        with contextlib.suppress(OSError):
            if out.stat().st_size == 0:
                out.unlink()  # nothing was printed: don't leave an empty file per session
        return batches
