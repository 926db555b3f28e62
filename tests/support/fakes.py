"""Test doubles for the engine's unit tests: an arm that records writes, a policy with latency and
adversarial outputs. The integration tests use the real simulated arm, Arm adapter and policy instead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from lepetpal_tui.settings import JOINT_NAMES
from lepetpal_tui.wire import ActionChunk, InferenceTiming, ModelStatus, Observation, ServoHealth

FloatArray = npt.NDArray[np.float64]


class FakeArm:
    """Position servos that reach their goal at once; records every goal write with its time."""

    def __init__(self, pose: list[float] | None = None) -> None:
        self.pose = np.array(pose if pose is not None else [0.0] * 6, dtype=np.float64)
        self.writes: list[tuple[float, FloatArray]] = []
        self.holds: list[float] = []
        self.torque = True
        self.connected = False
        self.fail_reads = False
        self.health = tuple(ServoHealth(j, 30.0, 5.0, 12.0) for j in JOINT_NAMES)
        self.lock = threading.Lock()
        self.disconnected_torque_off: bool | None = None

    def connect(self) -> None:
        self.connected = True

    def read_joints(self) -> FloatArray:
        if self.fail_reads:
            raise OSError("no status packet (simulated bus fault)")
        return self.pose.copy()

    def write_goals(self, goals: FloatArray) -> None:
        with self.lock:
            self.writes.append((time.monotonic(), np.array(goals, dtype=np.float64)))
        if self.torque:
            self.pose = np.array(goals, dtype=np.float64)

    def read_health(self) -> tuple[ServoHealth, ...]:
        return self.health

    def hold(self) -> FloatArray:
        self.holds.append(time.monotonic())
        return self.pose.copy()

    def set_torque(self, on: bool) -> None:
        self.torque = on

    def disconnect(self, torque_off: bool = True) -> None:
        self.connected = False
        self.disconnected_torque_off = torque_off


class FakePolicy:
    """Chunks from `make(obs, call_index) -> (n, 6)` after `latency_s` (sleep: releases the GIL like torch)."""

    def __init__(
        self,
        make: Callable[[Observation, int], FloatArray] | None = None,
        chunk_length: int = 50,
        latency_s: float = 0.0,
    ) -> None:
        self.chunk_length = chunk_length
        self.latency_s = latency_s
        self.make = make or (lambda obs, i: np.repeat(obs.joints[None, :], chunk_length, axis=0))
        self.calls = 0
        self.resets = 0
        self.tasks: list[str] = []
        self.name = "fake"

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.monotonic()
        time.sleep(self.latency_s)
        actions = np.asarray(self.make(obs, self.calls), dtype=np.float64)
        self.calls += 1
        self.tasks.append(obs.task)
        return ActionChunk(actions, InferenceTiming(model_s=time.monotonic() - t0), obs.task, obs.timestamp)

    def reset(self) -> None:
        self.resets += 1


def policy_factory(policy: FakePolicy) -> Callable[[Callable[[ModelStatus], None], threading.Event], FakePolicy]:
    def factory(on_status: Callable[[ModelStatus], None], cancel: threading.Event) -> FakePolicy:
        on_status(ModelStatus("ready", source="fake"))
        return policy

    return factory


def ramp_policy(speed_per_tick: float, joint: int = 0, chunk_length: int = 50) -> FakePolicy:
    """Moves one joint steadily (a time-indexed trajectory, so splices should be seamless)."""

    def make(obs: Observation, i: int) -> FloatArray:
        out = np.repeat(obs.joints[None, :], chunk_length, axis=0)
        out[:, joint] = obs.joints[joint] + speed_per_tick * np.arange(1, chunk_length + 1)
        return out

    return FakePolicy(make, chunk_length)
