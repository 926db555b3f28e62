"""The latest engine picture, folded from telemetry batches, with bounded history.

The worker thread only queues batches; the UI thread folds them in here (cheap) and the refresh timer
draws from here at a bounded rate. Plain Python: no textual, so it is unit-testable on its own.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from lepetpal_tui.stats import percentile
from lepetpal_tui.wire import (
    CameraStatus,
    EngineEvent,
    EngineState,
    ModelStatus,
    RecordingStatus,
    ServoHealth,
    TelemetryBatch,
    TickSample,
)

HISTORY_TICKS = 300  # 10 s at 30 Hz
HISTORY_CHUNKS = 120


@dataclass(frozen=True)
class Stats:
    current: float
    p50: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        if not values:
            return cls(math.nan, math.nan, math.nan)
        return cls(values[-1], percentile(values, 50), percentile(values, 99))


@dataclass
class TelemetryStore:
    state: EngineState = EngineState.DISCONNECTED
    task: str = ""
    dry_run: bool = False
    hold_reason: str = ""
    latest_tick: TickSample | None = None
    health: tuple[ServoHealth, ...] = ()
    model: ModelStatus | None = None
    plan_ahead: tuple[tuple[float, ...], ...] = ()
    frame_ring: str = ""
    cameras: tuple[CameraStatus, ...] = ()
    starved_ticks: int = 0
    clamp_count: int = 0
    estop_count: int = 0
    tick_count: int = 0
    batches: int = 0
    tick_periods_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_TICKS))
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CHUNKS))
    # Events not yet shown in the log; the log widget drains them.
    pending_events: list[EngineEvent] = field(default_factory=list)
    # Bumped on every change so the refresh timer redraws only when something moved.
    version: int = 0
    recording: RecordingStatus | None = None  # None: this engine has no recorder

    def apply(self, batch: TelemetryBatch) -> None:
        self.batches += 1
        self.state = batch.state
        self.task = batch.task
        self.dry_run = batch.dry_run
        self.hold_reason = batch.hold_reason
        self.plan_ahead = batch.plan_ahead
        self.frame_ring = batch.frame_ring
        self.cameras = batch.cameras
        for tick in batch.ticks:
            if tick.period_s > 0:
                self.tick_periods_ms.append(tick.period_s * 1000.0)
        if batch.ticks:
            self.latest_tick = batch.ticks[-1]
        for chunk in batch.chunks:
            self.inference_ms.append(chunk.timing.total_s * 1000.0)
        self.pending_events.extend(batch.events)
        if batch.health:
            self.health = batch.health
        if batch.model is not None:
            self.model = batch.model
        self.starved_ticks = batch.starved_ticks
        self.clamp_count = batch.clamp_count
        self.estop_count = batch.estop_count
        self.tick_count = batch.tick_count
        if batch.recording is not None:
            self.recording = batch.recording
        self.version += 1

    def set_state(self, state: EngineState, reason: str = "") -> None:
        """A state the UI knows before the engine says so (connecting, engine gone)."""
        self.state = state
        self.hold_reason = reason
        self.version += 1

    def take_events(self) -> list[EngineEvent]:
        out, self.pending_events = self.pending_events, []
        return out

    def tick_stats(self) -> Stats:
        return Stats.of(list(self.tick_periods_ms))

    def inference_stats(self) -> Stats:
        return Stats.of(list(self.inference_ms))

    @property
    def arm_moving(self) -> bool:
        """True when goals are being written (quitting must stop the arm first)."""
        return self.state in (EngineState.RUNNING, EngineState.MACRO)
