"""One line for recording: on/off, the episode being recorded and its frames, saved episodes, last mark.

Hidden while recording is off and nothing was recorded, so the screen is unchanged for those who never
record. Keys: F9 recording on/off, s / f mark the last episode success / failure.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from lepetpal_tui.wire import RecordingStatus


def recording_text(status: RecordingStatus) -> Text:
    text = Text()
    if status.on:
        text.append(" ● REC ", style="bold white on #c00018")
    else:
        text.append(" recording off ", style="bold")
    if status.in_episode:
        text.append(f"  episode {status.episodes} recording: {status.frames} frames")
    elif status.saving:
        text.append("  saving the episode ...")
    text.append(f"  ·  {status.episodes} saved")
    if status.last_episode is not None:
        mark = status.last_outcome or "not marked (s / f)"
        text.append(f"  ·  last: episode {status.last_episode} {mark}")
    if status.dropped:
        text.append(f"  ·  {status.dropped} ticks dropped", style="bold yellow")
    if status.error:
        text.append(f"  ·  {status.error}", style="bold red")
    text.append("   F9 on/off", style="dim")
    return text


class RecordingLine(Static):
    """The recorder's state (from `TelemetryBatch.recording`)."""

    DEFAULT_CSS = """
    RecordingLine { height: 1; padding: 0 1; }
    """

    _shown: Text | None = None

    def on_mount(self) -> None:
        self.display = False

    def show(self, status: RecordingStatus | None) -> None:
        visible = status is not None and (status.on or status.episodes > 0 or bool(status.error))
        if self.display != visible:
            self.display = visible
        if visible and status is not None:
            text = recording_text(status)
            if text != self._shown:  # the frame count moves every redraw; one fixed row, so no reflow
                self._shown = text
                self.update(text, layout=False)
