"""The engine's side of recording: a bounded, never-blocking queue to the recorder process.

`Engine._publish` (the telemetry thread, off the tick path) calls `feed(batch)` with every tick it
publishes. Ticks of a policy run (TickSample.run >= 0) become small records, one message per batch, in a
multiprocessing queue (pickled by the queue's own feeder thread); a full queue drops the message and counts
its ticks. A run's end (stop, e-stop, fault: the next tick has another run id) sends "end", which closes
the episode. Control messages (end, mark, quit) are never dropped: when the queue is full they wait in a
local backlog, and ticks behind them are dropped, so the order is kept.

Recording switched on while the policy runs starts with the next start (an episode is always a whole run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    RECORDER_CLOSE_S,
    EngineEvent,
    MarkEpisode,
    RecordingStatus,
    SetRecording,
    TelemetryBatch,
)

Level = Literal["info", "warning", "error"]
QUEUE_SIZE = 30 * 120  # two minutes of ticks at 30 Hz before anything is dropped
OUTCOMES = ("success", "failure", "timed out")


class RecordFeed:
    """Implements the engine's RecorderLike; owns the recorder process. Camera frames reach the recorder
    through the engine's frame ring (engine.frame_publisher), whose name it learns by message."""

    def __init__(self, settings: Settings, session_log: str = "",
                 ring_name: Callable[[], str] | None = None) -> None:
        """`ring_name`: the engine's frame ring, once it exists ("" before); None: no camera frames."""
        self.settings = settings
        self.session_log = session_log
        self._on = settings.recording.enabled
        self._ring_name = ring_name
        self._ring_sent = False
        self._proc: BaseProcess | None = None
        self._inbox: Any = None
        self._outbox: Any = None
        self._backlog: deque[tuple[Any, ...]] = deque()
        self._lock = threading.RLock()  # feed (telemetry thread) and command (command thread)
        self._open_run = -1  # the run being recorded
        self._skip_run = -1  # the run that was going when recording was switched on
        self._last_run = -1  # the newest run seen in a tick
        self._dropped = 0
        self._recorder: dict[str, Any] = {}
        self._status_reader: threading.Thread | None = None
        self.on_event: Callable[[EngineEvent], None] = lambda e: None

    # ------------------------------------------------------------------------------------ lifecycle

    def attach(self, on_event: Callable[[EngineEvent], None]) -> None:
        """Wire to the engine's event log; starts the recorder when recording is on."""
        self.on_event = on_event
        if self._on:
            self._start()

    def _say(self, level: Level, text: str) -> None:
        with contextlib.suppress(Exception):
            self.on_event(EngineEvent(time.monotonic(), level, text))

    def _start(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        from lepetpal_tui.record.dataset import RecordingError, choose_root, unwritable
        from lepetpal_tui.record.process import recorder_main

        chosen = choose_root(self.settings.recording)
        if why := unwritable(chosen):
            raise RecordingError(why)
        ctx = mp.get_context("spawn")
        self._inbox = ctx.Queue(QUEUE_SIZE)
        self._outbox = ctx.Queue()
        root = str(chosen)
        self._recorder = {"root": root}
        self._proc = ctx.Process(
            target=recorder_main,
            args=(self.settings, root, self.session_log, self._inbox, self._outbox, os.getpid()),
            name="lepetpal-recorder",
            daemon=False,  # must finish writing the last episode even while the engine exits
        )
        # Started from a thread already at the recorder's low priority: the child inherits the starting
        # thread's nice, and the caller may be the command thread at -10 (its whole start-up, imports
        # included, would then compete with the actuator).
        starter = threading.Thread(target=self._spawn_low, args=(self._proc,), name="engine-recorder-spawn")
        starter.start()
        starter.join()
        self._ring_sent = False
        self._offer_ring()
        self._status_reader = threading.Thread(target=self._read_outbox, name="engine-recorder-status", daemon=True)
        self._status_reader.start()
        self._say("info", f"Recording into {root} (recorder pid {self._proc.pid}).")

    @staticmethod
    def _spawn_low(proc: BaseProcess) -> None:
        from lepetpal_tui.record.process import lower_priority

        lower_priority()
        proc.start()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _read_outbox(self) -> None:
        outbox, proc = self._outbox, self._proc
        while proc is not None and (proc.is_alive() or not outbox.empty()):
            try:
                msg = outbox.get(timeout=0.5)
            except queue_mod.Empty:
                continue
            except (EOFError, OSError):
                return
            if msg[0] == "status":
                self._recorder = dict(msg[1])
            elif msg[0] == "event":
                self._say(msg[1], msg[2])

    def close(self, timeout: float = RECORDER_CLOSE_S) -> None:
        """After the engine stopped: end the open episode (per [recording] on_quit), wait for the save."""
        if self._proc is not None:
            self._send(("quit", self.settings.recording.on_quit), droppable=False)
            deadline = time.monotonic() + timeout
            while self._backlog and time.monotonic() < deadline:
                self._flush()
                time.sleep(0.05)
            self._proc.join(max(0.0, deadline - time.monotonic()))
            if self._proc.is_alive():
                self._proc.terminate()
                self._say("error", f"Recording: the recorder did not finish within {timeout:g} s and was "
                                   "stopped; the episode it was saving may be missing (earlier ones are whole).")
            if self._status_reader is not None:
                self._status_reader.join(2.0)  # its last status and events (saved, or why not)

    # -------------------------------------------------------------------------------------- the feed

    def _flush(self) -> bool:
        while self._backlog:
            try:
                self._inbox.put_nowait(self._backlog[0])
            except queue_mod.Full:
                return False
            self._backlog.popleft()
        return True

    def _send(self, msg: tuple[Any, ...], droppable: bool, ticks: int = 1) -> None:
        """`ticks`: how many ticks a dropped message counts as."""
        with self._lock:
            if self._inbox is None:
                return
            if self._flush():
                try:
                    self._inbox.put_nowait(msg)
                    return
                except queue_mod.Full:
                    pass
            if droppable:
                self._dropped += ticks
            else:
                self._backlog.append(msg)

    def feed(self, batch: TelemetryBatch) -> None:
        with self._lock:
            self._feed(batch)

    def _offer_ring(self) -> None:
        """Tell the recorder where the frames are, once the ring exists (the cameras open after connect)."""
        if self._ring_sent or self._ring_name is None or self._inbox is None:
            return
        name = self._ring_name()
        if name:
            self._send(("ring", name), droppable=False)
            self._ring_sent = True

    def _send_ticks(self, ticks: list[tuple[Any, ...]]) -> None:
        """One message for a batch's ticks: one pickle and one feeder-thread wake-up per telemetry batch
        instead of per tick (the feeder runs at nice 0 and takes the GIL from the actuator while it pickles)."""
        if ticks:
            self._send(("ticks", tuple(ticks)), droppable=True, ticks=len(ticks))
            ticks.clear()

    def _feed(self, batch: TelemetryBatch) -> None:
        self._offer_ring()
        task = batch.task
        # The run cut by quitting (the engine halts with "quitting" before it disconnects) is the one
        # [recording] on_quit decides about; every other end is saved.
        quitting = batch.hold_reason == "quitting" and self.settings.recording.on_quit == "discard"
        ticks: list[tuple[Any, ...]] = []
        for t in batch.ticks:
            self._last_run = max(self._last_run, t.run)
            if self._open_run >= 0 and t.run != self._open_run:
                self._send_ticks(ticks)  # the ticks before an end go first: order is kept
                self._send(("discard" if quitting else "end", self._open_run), droppable=False)
                self._open_run = -1
            if t.run < 0 or not self._on or t.run == self._skip_run or self._inbox is None:
                continue
            self._open_run = t.run
            ticks.append(("tick", t.t, t.run, task, t.measured,
                          t.goal, t.raw_action, t.clamped, t.starved, t.speed))
        self._send_ticks(ticks)

    # ---------------------------------------------------------------------------------- the commands

    def command(self, cmd: SetRecording | MarkEpisode) -> tuple[Level, str]:
        """Recording on/off, or mark the last episode."""
        with self._lock:
            if isinstance(cmd, MarkEpisode):
                return self._mark(cmd.outcome)
            return self._switch(cmd.on)

    def _mark(self, outcome: str) -> tuple[Level, str]:
        if self._proc is None:
            return "warning", "Nothing recorded yet: turn recording on first."
        if self._open_run >= 0:  # marking while the run goes on: its episode ends here
            self._send(("end", self._open_run), droppable=False)
            self._skip_run, self._open_run = self._open_run, -1
        self._send(("mark", outcome), droppable=False)
        return "info", ""

    def _switch(self, on: bool) -> tuple[Level, str]:
        if on == self._on:
            return "info", "Recording is already " + ("on." if self._on else "off.")
        self._on = on
        if not on:
            if self._open_run >= 0:
                self._send(("end", self._open_run), droppable=False)
                self._open_run = -1
            return "info", "Recording off (the episode in progress, if any, is saved)."
        self._skip_run = self._last_run if self._last_run >= 0 else -1
        try:
            self._start()
        except Exception as exc:
            self._on = False
            return "error", f"Cannot start the recorder: {exc}"
        return "info", "Recording on: each start of the policy records an episode."

    def status(self) -> RecordingStatus:
        r = self._recorder
        fields = {f.name for f in dataclasses.fields(RecordingStatus)}
        known = {k: v for k, v in r.items() if k in fields and k not in ("on", "dropped")}
        return RecordingStatus(on=self._on, dropped=self._dropped + int(r.get("dropped", 0)), **known)
