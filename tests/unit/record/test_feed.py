"""RecordFeed: episode boundaries from the run ids, drop-and-count, order of control messages, marks."""

from __future__ import annotations

import dataclasses
import queue
from pathlib import Path
from typing import Any

from lepetpal_tui.record.dataset import choose_root
from lepetpal_tui.record.feed import RecordFeed
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import EngineState, MarkEpisode, SetRecording, TelemetryBatch, TickSample


class FakeQueue:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: list[tuple[Any, ...]] = []

    def put_nowait(self, msg: tuple[Any, ...]) -> None:
        if len(self.items) >= self.maxsize:
            raise queue.Full
        self.items.append(msg)


class FakeProc:
    pid = 1

    def is_alive(self) -> bool:
        return True


def _feed(on: bool = True, maxsize: int = 1000) -> tuple[RecordFeed, FakeQueue]:
    s = Settings()
    s = dataclasses.replace(s, recording=dataclasses.replace(s.recording, enabled=on))
    feed = RecordFeed(s)
    q = FakeQueue(maxsize)
    feed._inbox, feed._proc = q, FakeProc()  # type: ignore[assignment]
    return feed, q


def _tick(run: int, t: float = 0.0) -> TickSample:
    return TickSample(t=t, period_s=0.033, work_s=0.001, measured=(0.0,) * 6, goal=(1.0,) * 6, written=True,
                      clamped=(False,) * 6, starved=False, queue_depth=10, raw_action=(2.0,) * 6, run=run)


def _batch(*runs: int) -> TelemetryBatch:
    return TelemetryBatch(state=EngineState.RUNNING, task="wave", ticks=[_tick(r, i) for i, r in enumerate(runs)])


def messages(q: FakeQueue) -> list[tuple[Any, ...]]:
    """The queue's messages with each batch of ticks opened into its ticks."""
    return [t for m in q.items for t in (m[1] if m[0] == "ticks" else (m,))]


def kinds(q: FakeQueue) -> list[str]:
    return [f"{m[0]}{m[2] if m[0] == 'tick' else m[1] if m[0] != 'mark' else ':' + m[1]}" for m in messages(q)]


def test_runs_become_episodes_and_idle_ticks_close_them() -> None:
    feed, q = _feed()
    feed.feed(_batch(-1, 1, 1))
    feed.feed(_batch(1, -1, -1, 2, 2))
    feed.feed(_batch(3))  # a restart without a stop in between is a new episode too
    assert kinds(q) == ["tick1", "tick1", "tick1", "end1", "tick2", "tick2", "end2", "tick3"]
    assert [m[0] for m in q.items] == ["ticks", "ticks", "end", "ticks", "end", "ticks"]  # one per batch
    tick = messages(q)[0]
    assert tick[3] == "wave" and tick[5] == (1.0,) * 6 and tick[6] == (2.0,) * 6  # task, goal, raw action


def test_full_queue_drops_ticks_and_counts_but_keeps_the_end_in_order() -> None:
    feed, q = _feed(maxsize=1)
    feed.feed(_batch(1, 1))
    feed.feed(_batch(1, 1, 1, -1))  # the queue is full: these three ticks are dropped, the end waits
    assert kinds(q) == ["tick1", "tick1"]
    assert feed.status().dropped == 3
    q.items.clear()  # the recorder caught up
    q.maxsize = 10
    feed.feed(_batch(2))
    assert kinds(q) == ["end1", "tick2"]


def test_mark_while_running_closes_that_episode_first() -> None:
    feed, q = _feed()
    feed.feed(_batch(1, 1))
    assert feed.command(MarkEpisode(outcome="success"))[0] == "info"
    feed.feed(_batch(1, 1, -1))  # the rest of that run is not recorded again as another episode
    assert kinds(q) == ["tick1", "tick1", "end1", "mark:success"]


def test_switched_on_mid_run_waits_for_the_next_start() -> None:
    feed, q = _feed(on=False)
    feed.feed(_batch(1, 1))
    feed._start = lambda: None  # type: ignore[method-assign]
    level, text = feed.command(SetRecording(on=True))
    assert level == "info" and "each start" in text
    feed.feed(_batch(1, 1, -1, 2))
    assert kinds(q) == ["tick2"]
    level, text = feed.command(SetRecording(on=False))
    assert "off" in text and kinds(q) == ["tick2", "end2"]
    feed.feed(_batch(2, 3))
    assert kinds(q) == ["tick2", "end2"]


def test_new_dataset_never_reuses_an_occupied_folder(tmp_path: Path) -> None:
    s = Settings().recording
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("{}")
    assert choose_root(dataclasses.replace(s, root=str(root), existing="resume")) == root.resolve()
    new = choose_root(dataclasses.replace(s, root=str(root), existing="new"))
    assert new == (tmp_path / "ds-2").resolve()
    (tmp_path / "ds-2").mkdir()
    (tmp_path / "ds-2" / "x").write_text("")
    assert choose_root(dataclasses.replace(s, root=str(root), existing="new")) == (tmp_path / "ds-3").resolve()


def test_the_run_cut_by_quitting_is_discarded_when_on_quit_says_so() -> None:
    for on_quit, last in (("discard", "discard1"), ("save", "end1")):
        feed, q = _feed()
        feed.settings = dataclasses.replace(
            feed.settings, recording=dataclasses.replace(feed.settings.recording, on_quit=on_quit))  # type: ignore[arg-type]
        feed.feed(_batch(1, 1))
        quit_batch = dataclasses.replace(_batch(-1), state=EngineState.READY, hold_reason="quitting")
        feed.feed(quit_batch)
        assert kinds(q)[-1] == last


def test_a_recorder_that_does_not_finish_its_save_is_stopped_and_said() -> None:
    feed, q = _feed()
    said: list[str] = []
    feed.on_event = lambda e: said.append(f"{e.level}: {e.message}")

    class StuckProc(FakeProc):
        terminated = False

        def join(self, timeout: float | None = None) -> None:
            pass

        def terminate(self) -> None:
            self.terminated = True

    proc = StuckProc()
    feed._proc = proc  # type: ignore[assignment]
    feed.close(timeout=0.05)
    assert q.items[-1] == ("quit", feed.settings.recording.on_quit)
    assert proc.terminated
    assert any(s.startswith("error: Recording: the recorder did not finish within 0.05 s") for s in said), said


def test_a_headless_evaluation_says_when_episodes_are_missing_from_the_dataset() -> None:
    from lepetpal_tui.record.evaluate import recording_loss
    from lepetpal_tui.wire import RecordingStatus

    assert recording_loss(RecordingStatus(on=True, episodes=2), 2) == ""
    assert recording_loss(None, 0) == ""
    assert "only 1 of 2 episodes were saved" in recording_loss(RecordingStatus(on=True, episodes=1), 2)
    assert "only 0 of 1" in recording_loss(None, 1)  # no status ever came: nothing is known to be saved
    failed = recording_loss(RecordingStatus(on=True, episodes=0, error="saving episode 0 failed: disk full"), 1)
    assert failed == "FAILED after 0 of 1 episodes: saving episode 0 failed: disk full"


def test_switching_on_into_a_root_that_cannot_be_written_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file\n")
    s = Settings()
    s = dataclasses.replace(s, recording=dataclasses.replace(s.recording, root=str(tmp_path / "taken" / "ds")))
    feed = RecordFeed(s)
    level, text = feed.command(SetRecording(on=True))
    assert level == "error"
    assert "taken is a file, not a folder" in text and "[recording] root" in text
    assert not feed.status().on and feed.pid is None  # no recorder process was started
    assert (tmp_path / "taken").read_text() == "a file\n"
