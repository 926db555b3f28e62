"""Recording runs as LeRobot dataset episodes (format v3.0), with success marks.

Why a package of its own: recording must go *around* the actuator, never through it. The engine's
telemetry publisher (a thread off the tick path) hands each tick to `feed.RecordFeed`, which puts a small
record into a bounded queue without ever blocking (a full queue drops and counts). The recorder is its
own process (`process.py`, nice +15): it pairs each tick with the camera frame of that moment from the
shared-memory frame ring, writes it with LeRobot's own `LeRobotDataset.add_frame`, and encodes and saves
when the episode ends. Each episode is finalized on its own (`dataset.py`), so a killed run leaves every
earlier episode readable. Marks (success / failure / timed out) are per-episode data beside LeRobot's
metadata (`marks.py`).

No torch or LeRobot import at module level here: the engine process imports `feed` only.
"""
