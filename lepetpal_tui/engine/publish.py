"""Telemetry out of the engine: the coalescer and the publisher thread.

The coalescer collects ticks, chunks and events from the engine's threads and hands them out as one
`TelemetryBatch` at a bounded rate (about 20 Hz), so a 30 Hz (or 200 Hz) loop never floods the UI. The
publisher runs on its own thread, off the tick's path: a slow receiver delays telemetry, never a tick.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from lepetpal_tui.wire import (
    ChunkSample,
    EngineEvent,
    EngineSnapshot,
    EngineState,
    Level,
    MarkEpisode,
    ModelStatus,
    RecordingStatus,
    ServoHealth,
    SetRecording,
    TelemetryBatch,
    TickSample,
)


class RecorderLike(Protocol):
    """What the engine needs from `record.feed.RecordFeed`. Fed from the publisher thread, never from the
    actuator tick; `feed` must not block."""

    def feed(self, batch: TelemetryBatch) -> None: ...
    def command(self, cmd: SetRecording | MarkEpisode) -> tuple[Level, str]: ...
    def status(self) -> RecordingStatus: ...


class TelemetryCoalescer:
    """Collects samples from several threads; `take` returns everything since the last call as one batch.

    Tick history is bounded (a UI that stops polling must not grow the engine's memory without limit).
    """

    def __init__(self, max_ticks: int = 1200) -> None:
        self._lock = threading.Lock()
        self._ticks: deque[TickSample] = deque(maxlen=max_ticks)
        self._chunks: list[ChunkSample] = []
        self._events: list[EngineEvent] = []
        self._model: ModelStatus | None = None
        self._health: tuple[ServoHealth, ...] = ()
        self._health_changed = False

    def add_tick(self, s: TickSample) -> None:
        with self._lock:
            self._ticks.append(s)

    def add_chunk(self, c: ChunkSample) -> None:
        with self._lock:
            self._chunks.append(c)

    def add_event(self, e: EngineEvent) -> None:
        with self._lock:
            self._events.append(e)

    def set_model(self, status: ModelStatus) -> None:
        with self._lock:
            self._model = status

    def set_health(self, health: tuple[ServoHealth, ...]) -> None:
        with self._lock:
            self._health = health
            self._health_changed = True

    def pending(self) -> bool:
        with self._lock:
            return bool(self._ticks or self._chunks or self._events or self._model or self._health_changed)

    def take(self, snapshot: EngineSnapshot) -> TelemetryBatch:
        """Drain into a batch; `snapshot` carries the engine's state and counters."""
        with self._lock:
            batch = TelemetryBatch(
                ticks=list(self._ticks),
                chunks=self._chunks,
                events=self._events,
                model=self._model,
                health=self._health,
                **{f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)},
            )
            self._ticks.clear()
            self._chunks = []
            self._events = []
            self._model = None
            self._health_changed = False
            return batch


class Publisher:
    """Hands a batch to `sink` about every `period_s` while anything changed (and at least twice a
    second, so the UI sees the engine is alive), and a last one once the engine has finished."""

    def __init__(
        self,
        coalescer: TelemetryCoalescer,
        snapshot: Callable[[], EngineSnapshot],
        sink: Callable[[TelemetryBatch], None] | None,
        finished: threading.Event,
        period_s: float,
        recorder: RecorderLike | None = None,
    ) -> None:
        self.coalescer = coalescer
        self._snapshot = snapshot
        self._sink = sink
        self._finished = finished
        self._period_s = period_s
        self._recorder = recorder

    def run(self) -> None:
        last_state: EngineState | None = None
        last_sent = 0.0
        while not self._finished.is_set():
            self._finished.wait(self._period_s)
            state = self._publish(force=False, last_state=last_state, last_sent=last_sent)
            last_state = state
            last_sent = time.monotonic()
        self._publish(force=True, last_state=None, last_sent=0.0)

    def publish_after_close(self) -> None:
        """One more batch once the engine has finished and the recorder has closed: the recorder's last
        status and events (the last episode saved, or why not) would otherwise never reach the UI."""
        if self._sink is not None:
            with contextlib.suppress(Exception):
                self._sink(self.coalescer.take(self._snapshot()))

    def _publish(self, force: bool, last_state: EngineState | None, last_sent: float) -> EngineState:
        snap = self._snapshot()
        if self._sink is None:
            self._record(self.coalescer.take(snap))  # drain so memory stays bounded
        elif force or self.coalescer.pending() or snap.state != last_state or time.monotonic() - last_sent > 0.5:
            batch = self.coalescer.take(snap)
            self._record(batch)
            with contextlib.suppress(Exception):  # the receiver is gone; the engine keeps holding
                self._sink(batch)
        return snap.state

    def _record(self, batch: TelemetryBatch) -> None:
        """Hand this batch's ticks to the recorder (a bounded, non-blocking queue: here, off the tick)."""
        if self._recorder is not None:
            with contextlib.suppress(Exception):  # a broken recorder must never stop the telemetry
                self._recorder.feed(batch)
