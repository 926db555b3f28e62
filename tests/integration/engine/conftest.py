"""Helpers for engine integration tests on the simulated arm (real Arm adapter, real LeRobot bus)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lepetpal_tui.arm.calibration import calibration_path, load_calibration
from lepetpal_tui.settings import JOINT_NAMES, Settings, replace_sections, replace_setting

STEPS = 4095  # LeRobot's max_res for the STS3215 (resolution 4096 - 1)


def sim_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    return replace_sections(replace_setting(Settings(), "logging.dir", str(tmp_path / "logs")), **sections)


def goal_writes(trace: list[Any]) -> list[tuple[float, int, int]]:
    """(time, motor id, raw goal) for every Goal_Position the servos received."""
    return [
        (r.t, r.motor_id, int(r.values[0]))
        for r in trace
        if r.direction == "rx" and r.register == "Goal_Position" and r.instruction in ("SYNC_WRITE", "WRITE")
    ]


def raw_to_units(settings: Settings, motor_id: int, raw: int) -> float:
    """Invert LeRobot's normalisation with the calibration the Arm wrote for the simulated arm."""
    cal = load_calibration(calibration_path(settings.arm, True))[JOINT_NAMES[motor_id - 1]]
    lo, hi = cal.range_min, cal.range_max
    if JOINT_NAMES[motor_id - 1] == "gripper":
        return (raw - lo) / (hi - lo) * 100.0
    return (raw - (lo + hi) / 2) * 360.0 / STEPS


def unit_tolerance(settings: Settings, motor_id: int) -> float:
    """One raw step (LeRobot truncates to int) in joint units."""
    cal = load_calibration(calibration_path(settings.arm, True))[JOINT_NAMES[motor_id - 1]]
    if JOINT_NAMES[motor_id - 1] == "gripper":
        return 100.0 / (cal.range_max - cal.range_min) + 1e-6
    return 360.0 / STEPS + 1e-6


def delayed(factory: Any, total_latency_s: float) -> Any:
    """Wrap a policy factory so each chunk takes at least `total_latency_s` (sleep releases the GIL)."""
    import time

    class Slow:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.chunk_length = inner.chunk_length

        def infer(self, obs: Any) -> Any:
            t0 = time.monotonic()
            chunk = self.inner.infer(obs)
            left = total_latency_s - (time.monotonic() - t0)
            if left > 0:
                time.sleep(left)
            chunk.timing = dataclasses.replace(chunk.timing, model_s=chunk.timing.model_s + max(0.0, left))
            return chunk

        def reset(self) -> None:
            self.inner.reset()

    def make(on_status: Any, cancel: threading.Event) -> Any:
        return Slow(factory(on_status, cancel))

    return make


def adversarial(kind: str, chunk_length: int = 30, seed: int = 0) -> Any:
    """A policy factory whose chunks jump wildly, leave the joint limits, or contain NaN."""
    from lepetpal_tui.wire import ActionChunk

    rng = np.random.default_rng(seed)

    class Adversary:
        def __init__(self) -> None:
            self.chunk_length = chunk_length
            self.calls = 0

        def infer(self, obs: Any) -> Any:
            self.calls += 1
            if kind == "jumps":
                a = obs.joints + rng.choice([-90.0, 90.0], size=(chunk_length, 6))
            elif kind == "out_of_range":
                a = np.tile([400.0, -400.0, 400.0, -400.0, 400.0, 250.0], (chunk_length, 1))
            else:  # nan on the second chunk
                a = np.tile(obs.joints, (chunk_length, 1)) + 1.0
                if self.calls >= 2:
                    a[3, 1] = np.nan
            return ActionChunk(np.asarray(a, dtype=np.float64))

        def reset(self) -> None:
            pass

    def make(on_status: Any, cancel: threading.Event) -> Any:
        return Adversary()

    return make
