"""The engine process (the child side; `engine.launcher` starts it and is the parent's handle).

Why a process: a busy Textual UI in the same interpreter delays ticks by 8-17 ms at p99 (GIL). The child
owns the arm, cameras and policy (torch and lerobot are imported only there); the parent sends `Command`s
and receives `TelemetryBatch`es over one duplex pipe. This module is the engine's process edge: the only
engine module that wires in the arm, the cameras and the policy (`build_engine`, imported lazily).

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
import os
import signal
import sys
import threading
import time
import typing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import Command, Quit, TelemetryBatch, UiLost

COMMAND_TYPES = typing.get_args(Command)  # what the pipe may carry from the UI

if TYPE_CHECKING:
    from lepetpal_tui.engine.facade import Engine


def session_log_path(settings: Settings) -> Path:
    folder = Path(settings.logging.dir).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"session-{stamp}-{os.getpid()}-{int(time.time() * 1000) % 1000:03d}.jsonl"


SIM_LOG = "lepetpal-sim.log"  # in the temp folder: the simulated arm's own output


class OwnedSim:
    """The simulated arm an engine starts for itself (arm.port = "sim" and no port given).

    Started on the engine's setup thread when the arm connects, stopped by `child_main` once the engine
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
    from lepetpal_tui.engine.facade import LOADS_WHILE_CONNECTING, Engine
    from lepetpal_tui.engine.session_log import SessionLog

    def arm_factory() -> Any:
        from lepetpal_tui.arm.adapter import Arm

        port = settings.arm.port
        if port == "sim":
            if sim_port:
                port = sim_port
            elif owned_sim is not None:
                port = owned_sim.start()
            else:
                raise RuntimeError('arm.port is "sim" but no simulated arm was started (launcher bug)')
        elif port == "auto":
            from lepetpal_tui.arm.ports import find_so101_port

            port = find_so101_port()
        return Arm(settings.arm, port, settings.safety, is_sim=settings.is_sim)

    def policy_factory(on_status: Any, cancel: threading.Event) -> Any:
        if settings.model.mode == "scripted":  # microseconds per chunk: no need for its own process
            from lepetpal_tui.policy.load import load_policy

            return load_policy(settings.model, settings.cameras, settings.arm.units, on_status, cancel,
                               rate_hz=settings.control.rate_hz)
        if settings.model.server:  # chunks from a LeRobot policy server; everything else stays here
            from lepetpal_tui.policy.server_client import connect_policy_server

            return connect_policy_server(settings, on_status, cancel)
        from lepetpal_tui.policy.process import spawn_policy_process

        return spawn_policy_process(settings, on_status, cancel)

    # SmolVLA loads in its own process and a server's chunks come over the network: neither holds this
    # process's GIL, so the engine starts them while the arm connects. The scripted policy (in-process,
    # instant) waits for the arm as before.
    setattr(policy_factory, LOADS_WHILE_CONNECTING, settings.model.mode != "scripted")

    def camera_factory(on_event: Any) -> dict[str, Any]:
        from lepetpal_tui.arm.camera import open_camera

        fallback = settings.safety.camera_fallback_synthetic
        return {name: open_camera(name, cs, on_event, fallback_synthetic=fallback, joints=lambda: engine.measured)
                for name, cs in settings.cameras.items()}

    def stand_in_factory(name: str, width: int, height: int, fps: int) -> Any:
        from lepetpal_tui.arm.camera import SyntheticCamera

        return SyntheticCamera(name, width, height, fps)

    log = SessionLog(log_path, settings, log_ticks=settings.logging.log_ticks) if log_path else None
    from lepetpal_tui.record.feed import RecordFeed

    # The recorder process starts only when recording is turned on; frames come from the frame ring.
    recorder = RecordFeed(settings, session_log=str(log_path or ""), ring_name=lambda: engine.frame_ring)
    engine = Engine(
        settings,
        arm_factory=arm_factory,
        policy_factory=policy_factory,
        camera_factory=camera_factory,
        on_telemetry=on_telemetry,
        session_log=log,
        stand_in_factory=stand_in_factory,
        recorder=recorder,
    )
    recorder.attach(engine.control.add_event)
    return engine



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


def child_main(conn: Connection, settings: Settings, sim_port: str | None, log_path: str) -> None:
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
    from lepetpal_tui.engine.frame_publisher import FramePublisher

    frames = FramePublisher(engine, settings)  # camera frames to the UI through shared memory
    frames.start()

    lost = threading.Event()

    def read_commands() -> None:
        from lepetpal_tui.engine.actuator import raise_thread_priority

        raise_thread_priority()  # an e-stop must not wait for a CPU behind inference
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(cmd, COMMAND_TYPES):
                if isinstance(cmd, UiLost):
                    lost.set()
                try:
                    engine.submit(cmd)
                except Exception as exc:  # this thread must live on: the next command may be the e-stop
                    engine.command_failed(cmd, exc)
        if not engine.finished:
            lost.set()
            engine.ui_lost("its pipe closed without a quit: the UI process exited, crashed or was killed")

    threading.Thread(target=read_commands, name="engine-commands", daemon=True).start()
    while not engine.join(0.05):
        if terminated.is_set():
            terminated.clear()
            engine.submit(Quit())
        # Belt and braces: a parent that died without closing the pipe (it was inherited elsewhere).
        if not lost.is_set() and os.getppid() != parent:
            lost.set()
            engine.ui_lost(f"the UI process {parent} is gone (the engine has a new parent)")
    engine.flush_telemetry()
    close_recorder = getattr(engine.recorder, "close", None)
    if callable(close_recorder):
        close_recorder()  # the open episode is saved (or discarded) per [recording] on_quit
        engine.publish_after_close()  # ... and the UI hears whether it was
    frames.stop()
    owned_sim.stop()  # only now: the engine has held and disconnected the arm
    with contextlib.suppress(Exception):
        conn.close()
