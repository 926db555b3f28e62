"""ScriptedPolicy: a deterministic pick-and-throw motion with the ChunkPolicy interface.

Used when `model.mode = "scripted"`, and as the fallback when SmolVLA cannot load. The motion is a loop
through named joint-space poses with cosine easing, so speed is zero at every pose and the largest change
per 30 Hz tick stays under 2.5 units. The trajectory is a function of time since the first inference
(taken from `Observation.timestamp`), so chunks computed ahead line up with the ones they replace.
"""

from __future__ import annotations

import math
import time

import numpy as np

from lepetpal_tui.joints import FloatArray
from lepetpal_tui.settings import JOINT_NAMES
from lepetpal_tui.wire import ActionChunk, InferenceTiming, Observation

# Joint order: shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper.
# All inside the default limits (±100 degrees body joints, gripper 0..100).
POSES: dict[str, tuple[float, ...]] = {
    "home": (0.0, 0.0, 0.0, 0.0, 0.0, 10.0),
    "reach": (25.0, 30.0, -25.0, 40.0, 0.0, 70.0),
    "grasp": (25.0, 45.0, -20.0, 45.0, 0.0, 70.0),
    "closed": (25.0, 45.0, -20.0, 45.0, 0.0, 5.0),
    "lift": (10.0, 10.0, 10.0, 20.0, 0.0, 5.0),
    "wind_up": (-10.0, -30.0, 55.0, 45.0, 0.0, 5.0),
    "throw": (-10.0, 25.0, -15.0, -20.0, 0.0, 5.0),
    "release": (-10.0, 25.0, -15.0, -20.0, 0.0, 80.0),
}
# (pose to move to, seconds for the move); the loop returns to "home".
SEQUENCE: tuple[tuple[str, float], ...] = (
    ("reach", 2.5),
    ("grasp", 1.2),
    ("closed", 1.5),
    ("lift", 2.0),
    ("wind_up", 2.0),
    ("throw", 1.4),
    ("release", 1.5),
    ("home", 2.5),
    ("home", 1.0),  # pause
)
ENTRY_SECONDS = 2.5  # shortest move from wherever the arm is to "home"
ENTRY_SPEED = 40.0  # units per second, so a far start pose gets a longer entry move


class ScriptedPolicy:
    """Deterministic demo policy; same interface as the SmolVLA runner."""

    name = "scripted"
    device = "cpu"
    dtype = "none"
    parameters = 0

    def __init__(self, *, rate_hz: float = 30.0, chunk_length: int = 50) -> None:
        if rate_hz <= 0 or chunk_length < 1:
            raise ValueError("rate_hz must be positive and chunk_length at least 1")
        self.rate_hz = float(rate_hz)
        self.chunk_length = int(chunk_length)
        self._t0: float | None = None
        self._start: FloatArray | None = None
        self._next_index = 0  # used when observations carry no timestamp

    def reset(self) -> None:
        self._t0 = None
        self._start = None
        self._next_index = 0

    def pose_at(self, t: float) -> FloatArray:
        """Joint goal `t` seconds after the first inference."""
        start = self._start if self._start is not None else np.asarray(POSES["home"], dtype=np.float64)
        home = np.asarray(POSES["home"], dtype=np.float64)
        entry = max(ENTRY_SECONDS, float(np.max(np.abs(start - home))) / ENTRY_SPEED)
        if t < entry:
            return _ease(start, home, t / entry)
        loop = sum(d for _, d in SEQUENCE)
        t = (t - entry) % loop
        prev = home
        for pose_name, dur in SEQUENCE:
            target = np.asarray(POSES[pose_name], dtype=np.float64)
            if t < dur:
                return _ease(prev, target, t / dur)
            t -= dur
            prev = target
        return home

    def infer(self, obs: Observation) -> ActionChunk:
        t_start = time.perf_counter()
        if self._t0 is None:
            self._t0 = obs.timestamp
            self._start = np.asarray(obs.joints, dtype=np.float64).reshape(len(JOINT_NAMES)).copy()
        first = round((obs.timestamp - self._t0) * self.rate_hz) if obs.timestamp > 0.0 else self._next_index
        self._next_index = first + self.chunk_length
        dt = 1.0 / self.rate_hz
        actions = np.stack([self.pose_at((first + i) * dt) for i in range(self.chunk_length)])
        model_s = time.perf_counter() - t_start
        return ActionChunk(
            actions=actions,
            timing=InferenceTiming(model_s=model_s),
            task=obs.task,
            observed_at=obs.timestamp,
        )


def _ease(a: FloatArray, b: FloatArray, u: float) -> FloatArray:
    u = min(max(u, 0.0), 1.0)
    w = 0.5 - 0.5 * math.cos(math.pi * u)
    return a + (b - a) * w
