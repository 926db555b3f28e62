"""An engine link that needs no engine: scripted telemetry, recorded commands, an optional fixed clock.

Tests use it to drive the UI deterministically; `bench/ui_figures.py` and `lepetpal ui --fake-telemetry`
use `SyntheticLink`, which invents a moving arm at a real control rate. It reacts to commands the way
the engine does (start -> RUNNING, estop -> E-STOP, rearm -> READY, ...), so key tests can check both
the command sent and what the screen shows afterwards.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Literal

from lepetpal_tui.settings import JOINT_NAMES
from lepetpal_tui.wire import (
    ChunkSample,
    Command,
    EngineEvent,
    EngineState,
    EStop,
    Heartbeat,
    InferenceTiming,
    ModelStatus,
    RunMacro,
    ServoHealth,
    SetDryRun,
    SetTask,
    Start,
    TelemetryBatch,
    TickSample,
    UiLost,
    command_name,
)

Clock = Callable[[], float]


class ScriptedLink:
    """Replays queued batches; records every command; answers commands with a new state batch."""

    def __init__(
        self,
        script: Iterable[TelemetryBatch] = (),
        *,
        clock: Clock = time.monotonic,
        respond: bool = True,
    ) -> None:
        self.clock = clock
        self.respond = respond
        self.sent: list[Command] = []
        self.heartbeats = 0
        self.closed_with: tuple[bool, float] | None = None
        self._queue: list[TelemetryBatch] = list(script)
        self._cond = threading.Condition()
        self._alive = True
        self._last: TelemetryBatch = self._queue[-1] if self._queue else TelemetryBatch(EngineState.READY)

    # -- EngineLink
    @property
    def alive(self) -> bool:
        return self._alive

    def send(self, command: Command) -> None:
        with self._cond:
            if isinstance(command, Heartbeat):
                self.heartbeats += 1  # counted, not recorded: tests assert on the operator's commands
                return
            self.sent.append(command)
            if self.respond:
                reply = self._react(command)
                if reply is not None:
                    self._queue.append(reply)
                    self._last = reply
            self._cond.notify_all()

    def poll(self, timeout: float) -> list[TelemetryBatch]:
        with self._cond:
            if not self._queue and self._alive:
                self._cond.wait(timeout)
            out, self._queue = self._queue, []
            return out

    def close(self, go_home: bool = False, timeout: float = 5.0) -> None:
        with self._cond:
            self.closed_with = (go_home, timeout)
            self._alive = False
            self._cond.notify_all()

    def abandon(self, reason: str) -> None:
        """The UI left without a quit (hangup, crash): recorded as a `ui_lost` command."""
        self.send(UiLost(sent_at=self.clock(), reason=reason))
        self.die()

    # -- test helpers
    def push(self, *batches: TelemetryBatch) -> None:
        with self._cond:
            self._queue.extend(batches)
            if batches:
                self._last = batches[-1]
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [command_name(c) for c in self.sent]

    def die(self) -> None:
        """Simulate the engine process vanishing."""
        with self._cond:
            self._alive = False
            self._cond.notify_all()

    def _event(
        self, message: str, level: Literal["info", "warning", "error"] = "info", fix: str = ""
    ) -> EngineEvent:
        return EngineEvent(t=self.clock(), level=level, message=message, fix=fix)

    def _react(self, c: Command) -> TelemetryBatch | None:
        last = self._last
        base = replace(last, ticks=[], chunks=[], events=[], model=None)
        s = last.state
        kind = command_name(c)
        task = c.task if isinstance(c, Start | SetTask) else ""
        if isinstance(c, EStop):
            torque = " torque OFF" if c.torque_off else ""
            return replace(
                base,
                state=EngineState.ESTOP,
                estop_count=last.estop_count + 1,
                hold_reason="e-stop" + torque,
                events=[self._event(f"E-STOP{torque}: holding", "warning")],
            )
        if kind == "rearm" and s == EngineState.ESTOP:
            return replace(base, state=EngineState.READY, hold_reason="", events=[self._event("re-armed")])
        if s == EngineState.ESTOP:
            return replace(base, events=[self._event(f"{kind} refused: e-stop is latched, re-arm first", "warning")])
        if kind == "start" and s == EngineState.LOADING:
            task = task or last.task
            return replace(base, hold_reason=f'start of "{task}" queued',
                           events=[self._event(f'Start queued: "{task}" starts when the policy is ready')])
        if kind == "stop" and s == EngineState.LOADING:
            return replace(base, hold_reason="", events=[self._event("queued start cancelled")])
        if kind == "start":
            state = EngineState.DRY_RUN if last.dry_run else EngineState.RUNNING
            return replace(base, state=state, task=task or last.task, events=[self._event(f"started: {task}")])
        if kind == "set_task":
            return replace(base, task=task, events=[self._event(f"task: {task}")])
        if kind == "stop":
            return replace(base, state=EngineState.READY, events=[self._event("stopped: holding")])
        if isinstance(c, SetDryRun):
            state = s
            if s in (EngineState.RUNNING, EngineState.DRY_RUN):
                state = EngineState.DRY_RUN if c.on else EngineState.RUNNING
            return replace(base, state=state, dry_run=c.on, events=[self._event(f"dry-run {'on' if c.on else 'off'}")])
        if isinstance(c, RunMacro):
            return replace(base, state=EngineState.MACRO, events=[self._event(f"macro {c.name}")])
        return None


class SyntheticLink(ScriptedLink):
    """Invents a moving arm: ticks at `rate_hz`, batches at `batch_hz`, a chunk every 50 ticks."""

    def __init__(self, rate_hz: float = 30.0, batch_hz: float = 20.0, clock: Clock = time.monotonic) -> None:
        ready = TelemetryBatch(
            EngineState.READY,
            model=ModelStatus(
                phase="ready", source="synthetic telemetry", revision="-", device="cpu", dtype="fp32",
                parameters=450_000_000, warmup_s=0.9, message="fake engine: nothing is connected",
            ),
            events=[EngineEvent(clock(), "warning", "fake telemetry: no engine, no arm (benchmark mode)")],
        )
        super().__init__([ready], clock=clock)
        self.rate_hz = rate_hz
        self.batch_hz = batch_hz
        self._t0 = clock()
        self._next_tick = self._t0
        self._next_batch = self._t0
        self._ticks = 0
        self._counts = {"starved": 0, "clamp": 0}

    def poll(self, timeout: float) -> list[TelemetryBatch]:
        now = self.clock()
        wait = max(0.0, min(timeout, self._next_batch - now))
        out = super().poll(wait) if wait > 0 else super().poll(0.0)
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
