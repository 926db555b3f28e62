"""`lepetpal ui --fake-telemetry R` (a hidden benchmark aid, used by bench/ui_figures.py): the UI on
invented telemetry, with no engine and no arm, so only the UI's own cost is measured.

It invents a moving arm at a real control rate and records the commands it is sent; it does not answer
them (there is one state machine, the engine's): the screen shows RUNNING throughout.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from lepetpal_tui.joints import JOINT_NAMES
from lepetpal_tui.wire import (
    ChunkSample,
    Command,
    EngineEvent,
    EngineState,
    Heartbeat,
    InferenceTiming,
    ModelStatus,
    ServoHealth,
    TelemetryBatch,
    TickSample,
)

Clock = Callable[[], float]


class SyntheticLink:
    """Invents a moving arm: ticks at `rate_hz`, batches at `batch_hz`, a chunk every 50 ticks."""

    def __init__(self, rate_hz: float = 30.0, batch_hz: float = 20.0, clock: Clock = time.monotonic) -> None:
        ready = TelemetryBatch(
            EngineState.RUNNING,
            task="invented telemetry",
            model=ModelStatus(
                phase="ready", source="synthetic telemetry", revision="-", device="cpu", dtype="fp32",
                parameters=450_000_000, warmup_s=0.9, message="fake engine: nothing is connected",
            ),
            events=[EngineEvent(clock(), "warning", "fake telemetry: no engine, no arm (benchmark mode)")],
        )
        self.clock = clock
        self.sent: list[Command] = []
        self._queue: list[TelemetryBatch] = [ready]
        self._last = ready
        self._cond = threading.Condition()
        self._alive = True
        self.rate_hz = rate_hz
        self.batch_hz = batch_hz
        self._t0 = clock()
        self._next_tick = self._t0
        self._next_batch = self._t0
        self._ticks = 0
        self._counts = {"starved": 0, "clamp": 0}

    @property
    def alive(self) -> bool:
        return self._alive

    def send(self, command: Command) -> None:
        if not isinstance(command, Heartbeat):
            self.sent.append(command)

    def close(self, go_home: bool = False, timeout: float = 5.0) -> None:
        with self._cond:
            self._alive = False
            self._cond.notify_all()

    def poll(self, timeout: float) -> list[TelemetryBatch]:
        now = self.clock()
        wait = max(0.0, min(timeout, self._next_batch - now))
        with self._cond:
            if wait > 0 and self._alive:
                self._cond.wait(wait)
            out, self._queue = self._queue, []
        now = self.clock()
        if now < self._next_batch or not self.alive:
            return out
        self._next_batch = now + 1.0 / self.batch_hz
        ticks: list[TickSample] = []
        chunks: list[ChunkSample] = []
        period = 1.0 / self.rate_hz
        moving = self._last.state in (EngineState.RUNNING, EngineState.DRY_RUN, EngineState.MACRO)
        while self._next_tick <= now:
            t = self._next_tick
            self._ticks += 1
            phase = (t - self._t0) * 0.8
            measured = (*tuple(40.0 * math.sin(phase + i) for i in range(5)), 50 + 40 * math.sin(phase))
            goal = tuple(v + 2.0 for v in measured) if moving else None
            jitter = 0.0015 * math.sin(self._ticks * 0.7)
            ticks.append(
                TickSample(
                    t=t, period_s=period + jitter, work_s=0.002, measured=measured, goal=goal,
                    written=moving and self._last.state != EngineState.DRY_RUN,
                    clamped=tuple(moving and i == 0 and self._ticks % 40 < 5 for i in range(6)),
                    starved=False, queue_depth=50 - self._ticks % 50,
                )
            )
            if moving and self._ticks % 50 == 0:
                timing = InferenceTiming(0.05, 0.8 + 0.1 * math.sin(self._ticks), 0.01)
                chunks.append(ChunkSample(t, timing, 50, 15, self._last.task))
            self._next_tick += period
        health = tuple(ServoHealth(j, 38.0 + i, 12.0 + 3 * i, 12.1) for i, j in enumerate(JOINT_NAMES))
        batch = replace(
            self._last, ticks=ticks, chunks=chunks, events=[], model=None, health=health,
            tick_count=self._ticks,
        )
        return [*out, batch]
