"""A scripted engine link for the UI tests: scripted telemetry, recorded commands, a fixed clock.

What it answers to a command is not a second state machine: it asks the real engine. `EngineReplies`
runs the real `Engine` in this process on a fake arm and policy (support.fakes), brought to the state the
script shows (READY, RUNNING, DRY-RUN, E-STOP, LOADING), and the reply is the state, hold reason and events
that engine produced for the same command, re-timed to the link's clock.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    Command,
    EngineEvent,
    EngineSnapshot,
    EngineState,
    EStop,
    Heartbeat,
    Quit,
    RunMacro,
    SetDryRun,
    Start,
    TelemetryBatch,
    UiLost,
    command_name,
)
from support import fakes

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
        self._replies: EngineReplies | None = None

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
        self.close_replies()

    def close_replies(self) -> None:
        """Stop the real engine that answered commands (if one was started)."""
        replies, self._replies = self._replies, None
        if replies is not None:
            replies.close()

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

    def _react(self, c: Command) -> TelemetryBatch | None:
        """The real engine's answer to `c`, from the state of the last batch the UI saw."""
        if self._replies is None:
            self._replies = EngineReplies(self._last)
        answer = self._replies.answer(c)
        if answer is None:
            return None
        snap, events = answer
        base = replace(self._last, ticks=[], chunks=[], events=[], model=None)
        return replace(
            base,
            state=snap.state,
            hold_reason=snap.hold_reason,
            hold_cause=snap.hold_cause,
            task=snap.task,
            dry_run=snap.dry_run,
            estop_count=self._last.estop_count + (snap.state == EngineState.ESTOP and snap.estop_count > 0),
            events=[replace(e, t=self.clock() + 0.01 * k) for k, e in enumerate(events)],
        )


class EngineReplies:
    """The real engine, in-process on a fake arm and a fake policy, brought to a scripted state."""

    def __init__(self, shown: TelemetryBatch) -> None:
        self._batches: list[TelemetryBatch] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        loading = shown.state in (EngineState.LOADING, EngineState.CONNECTING, EngineState.DISCONNECTED)
        policy = fakes.policy_factory(fakes.FakePolicy())

        def gated_policy(on_status: Any, cancel: threading.Event) -> Any:
            while not (self._release.is_set() or cancel.is_set()):  # LOADING until closed
                time.sleep(0.01)
            return policy(on_status, cancel)

        self.engine = Engine(Settings(), arm_factory=fakes.FakeArm, policy_factory=gated_policy if loading else policy,
                             on_telemetry=self._keep, telemetry_hz=200.0)
        self.engine.start()
        want = EngineState.LOADING if loading else EngineState.READY
        if not self.engine.wait_for((want,), 10.0):
            raise AssertionError(f"the real engine did not reach {want}: {self.engine.snapshot()}")
        if shown.dry_run:
            self.engine.submit(SetDryRun(on=True))
        if shown.state in (EngineState.RUNNING, EngineState.DRY_RUN):
            self.engine.submit(Start(task=shown.task or "scripted task"))
        elif shown.state == EngineState.ESTOP:
            self.engine.submit(EStop(torque_off="torque" in shown.hold_reason.lower()))
        elif shown.state == EngineState.MACRO:
            self.engine.submit(RunMacro(name="home"))
        time.sleep(0.05)
        self._take()  # what it said on the way is not an answer
        atexit.register(self.close)

    def _keep(self, batch: TelemetryBatch) -> None:
        with self._lock:
            self._batches.append(batch)

    def _take(self) -> list[EngineEvent]:
        with self._lock:
            batches, self._batches = self._batches, []
        return [e for b in batches for e in b.events]

    def answer(self, c: Command) -> tuple[EngineSnapshot, list[EngineEvent]] | None:
        if isinstance(c, Heartbeat | UiLost | Quit):
            return None
        self._take()
        self.engine.submit(c)
        deadline = time.monotonic() + 1.0
        events: list[EngineEvent] = []
        while time.monotonic() < deadline:  # every command the engine applies says something
            time.sleep(0.02)
            events += self._take()
            if events:
                break
        return self.engine.snapshot(), events

    def close(self) -> None:
        self._release.set()
        if not self.engine.finished:
            self.engine.close(timeout=2.0)
