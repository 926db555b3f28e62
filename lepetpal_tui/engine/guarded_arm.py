"""The arm behind the bus lock: the only way the engine's threads reach the servos.

The actuator tick, the halt path (stop, e-stop, faults), re-arm, the health read and the disconnect all
go through `call`, so "take the bus lock, try the arm call, keep the failure" is written once. A goal is
written with `write_if`, whose check (the epoch is unchanged, no e-stop latched) runs *inside* the lock:
once a halt has bumped the epoch, no goal decided before it can reach the bus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lepetpal_tui.joints import FloatArray
from lepetpal_tui.wire import ServoHealth


class ArmLike(Protocol):
    """What the engine needs from `arm.adapter.Arm` (tests pass a fake)."""

    def connect(self) -> None: ...
    def read_joints(self) -> FloatArray: ...
    def write_goals(self, goals: FloatArray) -> None: ...
    def read_health(self) -> tuple[ServoHealth, ...]: ...
    def hold(self) -> FloatArray: ...
    def set_torque(self, on: bool) -> None: ...
    def disconnect(self, torque_off: bool = True) -> None: ...


@dataclass(frozen=True)
class BusResult[T]:
    """What one bus call gave: its value, or the exception it raised."""

    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class GuardedArm:
    """One arm, one lock. Thread-safe; every call holds the lock for one arm transaction only."""

    def __init__(self, arm: ArmLike) -> None:
        self.arm = arm
        self._lock = threading.Lock()
        self.write_count = 0
        self.last_write_t = 0.0  # the last goal (or hold) that reached the bus

    def call[T](self, fn: Callable[[ArmLike], T], *, writes: bool = False) -> BusResult[T]:
        """Run `fn(arm)` under the bus lock. A bus fault comes back as the result's `error`: every caller
        decides what a failure means (count it, report it, or hold), none may let it escape."""
        with self._lock:
            try:
                value = fn(self.arm)
            except Exception as exc:
                return BusResult(error=exc)
            if writes:
                self.last_write_t = time.monotonic()
            return BusResult(value)

    @property
    def waits_block(self) -> bool:
        """Whether the arm's bus client sleeps while it waits for replies (never spins): only then may the
        tick's bus work run at real-time priority. An arm that does not say is taken to spin."""
        return getattr(self.arm, "bus_waits_block", False) is True

    def write_if(self, goal: FloatArray, still_current: Callable[[], bool]) -> BusResult[bool]:
        """Write `goal` if `still_current()` holds inside the lock; value False: not written (stale)."""
        with self._lock:
            if not still_current():
                return BusResult(False)
            try:
                self.arm.write_goals(goal)
            except Exception as exc:
                return BusResult(False, exc)
            self.write_count += 1
            self.last_write_t = time.monotonic()
            return BusResult(True)
