"""Recording keys and the recording line: F9 toggles recording (also from the task field), s / f mark the
last episode outside the task field, and the line shows what the recorder reports."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from textual.widgets import Input

from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.ui.widgets.recording import RecordingLine, recording_text
from lepetpal_tui.wire import EngineState, MarkEpisode, RecordingStatus, SetRecording, TelemetryBatch

SIZE = (120, 40)


def _drive(make_app: Any, settle: Any, body: Any) -> None:
    async def go() -> None:
        app, link = make_app("running")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app, 2)
            await body(pilot, app, link)

    asyncio.run(go())


def test_f9_toggles_recording_and_s_f_mark_outside_the_task_field(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: Any) -> None:
        await pilot.press("s", "f")  # in the task field: text
        await pilot.pause()
        assert link.kinds() == [] and app.query_one("#task-input", Input).value == "sf"
        await pilot.press("f9")  # an F-key works from the field
        await pilot.pause()
        assert [dataclasses.replace(c, sent_at=0.0) for c in link.sent] == [SetRecording(on=True)]
        link.push(TelemetryBatch(EngineState.RUNNING, recording=RecordingStatus(on=True)))
        await settle(pilot, app, 3)
        await pilot.press("escape")
        await pilot.press("f9", "s", "f")
        await pilot.pause()
        assert [dataclasses.replace(c, sent_at=0.0) for c in link.sent][1:] == [
            SetRecording(on=False), MarkEpisode(outcome="success"), MarkEpisode(outcome="failure")]

    _drive(make_app, settle, body)


def test_recording_line_hidden_until_recording_then_shows_episode_frames_and_mark(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: Any) -> None:
        line = app.query_one(RecordingLine)
        assert not line.display
        status = RecordingStatus(on=True, episodes=2, frames=42, in_episode=True, last_episode=1,
                                 last_outcome="success")
        link.push(TelemetryBatch(EngineState.RUNNING, recording=status))
        await settle(pilot, app, 3)
        assert line.display
        text = recording_text(status).plain
        assert "REC" in text and "episode 2 recording: 42 frames" in text and "last: episode 1 success" in text
        assert str(line.render()) == text

    _drive(make_app, settle, body)
