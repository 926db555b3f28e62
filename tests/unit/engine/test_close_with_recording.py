"""Quitting while recording: the engine's last batch comes after the recorder's close, and the engine
client waits for the recorder's save instead of terminating the engine in the middle of it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.engine import launcher
from lepetpal_tui.engine.launcher import EngineClient
from lepetpal_tui.engine.publish import Publisher, TelemetryCoalescer
from lepetpal_tui.wire import EngineEvent, EngineSnapshot, EngineState, RecordingStatus, TelemetryBatch


def test_the_recorders_last_words_reach_the_ui_after_the_final_batch() -> None:
    coalescer = TelemetryCoalescer()
    status = [RecordingStatus(on=True, in_episode=True)]
    sent: list[TelemetryBatch] = []
    finished = threading.Event()
    finished.set()
    publisher = Publisher(coalescer, lambda: EngineSnapshot(EngineState.DISCONNECTED, recording=status[0]),
                          sent.append, finished, 0.05)
    publisher.run()  # the engine's last batch, as today: before the recorder closes
    # ... then the recorder saves the episode and says so
    status[0] = RecordingStatus(on=True, episodes=1, last_episode=0)
    coalescer.add_event(EngineEvent(0.0, "info", "Recording: episode 0 saved (40 frames)."))
    publisher.publish_after_close()
    assert len(sent) == 2
    assert [e.message for e in sent[-1].events] == ["Recording: episode 0 saved (40 frames)."]
    assert sent[-1].recording == RecordingStatus(on=True, episodes=1, last_episode=0)


class _Process:
    """An engine process that exits `lives_s` after the quit (its recorder still saving until then)."""

    def __init__(self, lives_s: float) -> None:
        self.lives_s = lives_s
        self.quit_at: float | None = None
        self.terminated = False

    def is_alive(self) -> bool:
        return not self.terminated and (self.quit_at is None or time.monotonic() - self.quit_at < self.lives_s)

    def terminate(self) -> None:
        self.terminated = True

    def join(self, timeout: float | None = None) -> None:
        pass


class _Conn:
    def __init__(self, process: _Process, first: TelemetryBatch) -> None:
        self.process = process
        self.items: list[Any] = [first]

    def send(self, item: Any) -> None:
        self.process.quit_at = time.monotonic()

    def poll(self, timeout: float = 0.0) -> bool:
        if not self.items:
            time.sleep(timeout)
        return bool(self.items)

    def recv(self) -> Any:
        return self.items.pop(0)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("recording", [RecordingStatus(on=True, in_episode=True), RecordingStatus(on=True)])
def test_quit_waits_for_the_recorder_only_while_an_episode_is_open(
        recording: RecordingStatus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "RECORDER_CLOSE_S", 10.0)
    process = _Process(lives_s=1.0)
    client = EngineClient(process, _Conn(process, TelemetryBatch(state=EngineState.READY, recording=recording)),  # type: ignore[arg-type]
                          tmp_path / "session.jsonl")
    assert client.poll(0)  # the UI has heard the recorder's status before it quits
    batches = client.close(timeout=0.1)
    gave_up = any("did not stop in time" in e.message for b in batches for e in b.events)
    if recording.save_pending:
        assert not process.terminated and not gave_up, "terminated while the recorder was saving"
    else:
        assert process.terminated and gave_up  # nothing to save: the usual timeout holds
