"""Start the engine process and talk to it: the one launcher the TUI and `lepetpal run` both use.

With `arm.port = "sim"` and no simulated arm given, the engine starts the simulated arm itself, so both
outlive a hangup of the launching terminal long enough to hold and disconnect (see `engine.process`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from lepetpal_tui.engine.process import child_main, engine_output_path, session_log_path
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    RECORDER_CLOSE_S,
    Command,
    EngineEvent,
    EngineState,
    EventKind,
    Quit,
    RecordingStatus,
    TelemetryBatch,
    UiLost,
    command_name,
)


class EngineStartError(Exception):
    """The engine process could not be started; the message says what to do."""



class EngineClient:
    """Handle on an engine process. Use from one thread (the UI's worker); `send` is thread-safe."""

    def __init__(self, process: BaseProcess, conn: Connection, log_path: Path) -> None:
        self._process = process
        self._conn = conn
        self._send_lock = threading.Lock()
        self.log_path = log_path
        self._closed = False
        self._pending: list[TelemetryBatch] = []
        self._recording: RecordingStatus | None = None  # the newest recorder status heard

    @classmethod
    def spawn(cls, settings: Settings, sim_port: str | None = None) -> EngineClient:
        """Start the engine process; returns at once (state and model progress arrive via `poll`).

        With arm.port = "sim" the engine drives the simulated arm at `sim_port`, or, when none is given,
        starts its own (which then lives exactly as long as the engine)."""
        ctx = mp.get_context("spawn")  # torch/lerobot load in the child only; no forked threads
        log_path = session_log_path(settings)
        try:  # here, not in the engine: there a log that cannot be written is a crash with no one to read it
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
        except OSError as exc:
            raise EngineStartError(
                f"Cannot write the session log in {log_path.parent} ({exc.strerror or exc}). Set [logging] dir "
                "in lepetpal.toml to a folder you can write to."
            ) from None
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=child_main,
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
                                            f'The engine process is gone ({exc}); "{command_name(cmd)}" was not '
                                            "delivered.",
                                            f"Restart lepetpal. The session log is {self.log_path}; the engine's "
                                            f"own output is in {engine_output_path(self.log_path)}.",
                                            EventKind.ENGINE_GONE)],
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
                    if item.recording is not None:
                        self._recording = item.recording
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
        self.send(UiLost(reason=reason))
        with contextlib.suppress(Exception):
            self._conn.close()

    def close(self, go_home: bool = False, timeout: float = 5.0) -> list[TelemetryBatch]:
        """Ask the engine to quit (hold, optionally home, disconnect) and wait; returns the last batches.

        After `timeout` (plus the home motion when asked, plus the recorder's close while an episode is
        open or saving: the engine saves it after disconnecting) the process is terminated."""
        if self._closed:
            return []
        self._closed = True
        batches: list[TelemetryBatch] = []
        self.send(Quit(go_home=go_home))
        deadline = time.monotonic() + timeout + (30.0 if go_home else 0.0)
        if self._recording is not None and self._recording.save_pending:
            deadline += RECORDER_CLOSE_S
        while self._process.is_alive() and time.monotonic() < deadline:
            batches.extend(self.poll(0.05))
        batches.extend(self.poll(0))
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(2.0)
            batches.append(
                TelemetryBatch(
                    state=EngineState.ERROR,
                    events=[EngineEvent(time.monotonic(), "error", "The engine did not stop in time; terminated.",
                                        kind=EventKind.ENGINE_GONE)],
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
