"""The engine's recording hook: every tick reaches the recorder from the publisher thread, with the run
it belongs to (a new one per start, -1 after stop / e-stop) and the plan's action before the filter."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from support import fakes

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    Command,
    EngineState,
    EStop,
    MarkEpisode,
    Rearm,
    RecordingStatus,
    Start,
    TelemetryBatch,
    TickSample,
)


def _fakes() -> Any:
    return fakes


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[TickSample] = []
        self.threads: set[str] = set()
        self.commands: list[Command] = []

    def feed(self, batch: TelemetryBatch) -> None:
        self.threads.add(threading.current_thread().name)
        self.ticks.extend(batch.ticks)

    def command(self, cmd: Command) -> tuple[str, str]:
        self.commands.append(cmd)
        return "info", "noted"

    def status(self) -> RecordingStatus:
        return RecordingStatus(on=True, episodes=len(self.commands))


def test_runs_and_raw_actions_reach_the_recorder_off_the_tick() -> None:
    fk = _fakes()
    rec = Recorder()
    jump = np.array([50.0, 0, 0, 0, 0, 0])  # far beyond max_step_per_tick: the filter clamps it

    def policy(obs: Any, i: int) -> Any:
        return np.repeat((obs.joints + jump)[None, :], 50, axis=0)

    batches: list[TelemetryBatch] = []
    engine = Engine(Settings(), arm_factory=lambda: fk.FakeArm(), policy_factory=fk.policy_factory(fk.FakePolicy(policy)),
                    on_telemetry=batches.append, recorder=rec)  # type: ignore[arg-type]
    engine.start()
    try:
        assert engine.wait_for((EngineState.READY,), 5.0)
        for _ in range(2):
            engine.submit(Start(task="wave"))
            time.sleep(0.5)
            engine.submit(EStop())
            time.sleep(0.2)
            engine.submit(Rearm())
            time.sleep(0.2)
        engine.submit(MarkEpisode(outcome="success"))
    finally:
        engine.close()
        engine.flush_telemetry()
    assert rec.threads == {"engine-telemetry"}
    runs = [t.run for t in rec.ticks]
    assert sorted(set(runs)) == [-1, 1, 2]
    changes = [r for i, r in enumerate(runs) if i == 0 or r != runs[i - 1]]
    assert changes[-4:] == [1, -1, 2, -1]  # each start its own run, closed by the e-stop
    moving = [t for t in rec.ticks if t.run > 0 and t.goal is not None and t.raw_action is not None]
    cut = [t for t in moving if t.goal is not None and t.raw_action is not None and t.raw_action[0] - t.goal[0] > 10]
    assert len(cut) > 5, "the raw action should be the plan before the filter, the goal after it"
    assert all(t.clamped[0] for t in cut)
    assert [c.outcome for c in rec.commands if isinstance(c, MarkEpisode)] == ["success"]
    assert batches[-1].recording is not None and batches[-1].recording.episodes == 1
