"""The one safety filter every goal passes through, and the servo health guard.

The filter is pure numpy (no bus access) so it can be tested exhaustively and costs microseconds per tick.
Order matters: non-finite check first (a NaN must never reach a clamp, where it would survive), then the
joint limits, then the per-tick change relative to the previous goal (which also ramps from the measured
pose at start, because the engine seeds the previous goal with the measured pose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lepetpal_tui.feetech.protocol import ErrorBit
from lepetpal_tui.settings import JOINT_NAMES, ArmSettings, SafetySettings
from lepetpal_tui.wire import ServoHealth

FloatArray = npt.NDArray[np.float64]
GRIPPER_INDEX = JOINT_NAMES.index("gripper")
_NO_CLAMP: tuple[bool, ...] = (False,) * len(JOINT_NAMES)


@dataclass(frozen=True)
class FilterResult:
    """`goal` is None when the tick must hold (reason says why); `clamped` flags joints the filter changed."""

    goal: FloatArray | None
    clamped: tuple[bool, ...]
    reason: str = ""

    @property
    def clamp_count(self) -> int:
        return sum(self.clamped)


class SafetyFilter:
    """Clamp a proposed goal to joint limits and a maximum change per tick."""

    def __init__(self, arm: ArmSettings) -> None:
        lo = np.array([arm.limits[j][0] for j in JOINT_NAMES], dtype=np.float64)
        hi = np.array([arm.limits[j][1] for j in JOINT_NAMES], dtype=np.float64)
        # The gripper is 0..100 whatever the configured limits say (LeRobot's RANGE_0_100 normalisation).
        lo[GRIPPER_INDEX] = max(lo[GRIPPER_INDEX], 0.0)
        hi[GRIPPER_INDEX] = min(hi[GRIPPER_INDEX], 100.0)
        self.lo: FloatArray = lo
        self.hi: FloatArray = hi
        self.max_step = float(arm.max_step_per_tick)

    def apply(self, proposed: FloatArray, previous: FloatArray) -> FilterResult:
        """Filter `proposed` given the previous goal (or the measured pose when starting a ramp)."""
        proposed = np.asarray(proposed, dtype=np.float64)
        if proposed.shape != (len(JOINT_NAMES),):
            return FilterResult(None, _NO_CLAMP, f"policy action has shape {proposed.shape}, expected (6,)")
        bad = ~np.isfinite(proposed)
        if bad.any():
            names = ", ".join(JOINT_NAMES[i] for i in np.flatnonzero(bad))
            return FilterResult(None, tuple(bool(b) for b in bad), f"non-finite action for {names}")
        goal = np.clip(proposed, self.lo, self.hi)
        # The previous goal may itself lie outside the limits (arm placed there by hand): clipping the
        # reference keeps the ramp moving *into* the allowed range rather than freezing.
        ref = np.clip(np.asarray(previous, dtype=np.float64), self.lo, self.hi)
        goal = np.clip(goal, ref - self.max_step, ref + self.max_step)
        # Allow a tiny tolerance so float round-off is not counted as a clamp.
        changed = np.abs(goal - proposed) > 1e-9
        return FilterResult(goal, tuple(bool(c) for c in changed))

    def within_limits(self, pose: FloatArray) -> bool:
        return bool(np.all(pose >= self.lo - 1e-9) and np.all(pose <= self.hi + 1e-9))


# The status byte's faults a servo protects itself from (an overload cuts its torque, and the STS3215 keeps
# the flag until it is power-cycled): a joint that reports one may no longer follow its goal. ANGLE is left
# out: the servo sets it for a goal beyond its own position limits (the calibrated range, which may be
# narrower than [arm.limits]) and clamps that goal itself.
_SERVO_FAULTS = {
    ErrorBit.VOLTAGE: "reports an input-voltage error",
    ErrorBit.OVERHEAT: "reports overheating",
    ErrorBit.OVERCURRENT: "reports an over-current",
    ErrorBit.OVERLOAD: "reports an overload (its torque is cut until it is power-cycled)",
}


def health_problem(health: tuple[ServoHealth, ...], safety: SafetySettings) -> str:
    """A one-line reason to hold when any servo is outside the configured thresholds or reports a fault in
    its status byte, else ""."""
    problems: list[str] = []
    for h in health:
        problems.extend(f"{h.joint} {what}" for bit, what in _SERVO_FAULTS.items() if h.error_bits & bit)
        if h.temperature_c > safety.max_temperature_c:
            problems.append(f"{h.joint} at {h.temperature_c:.0f} °C (max {safety.max_temperature_c:g})")
        if h.load_pct > safety.max_load_pct:
            problems.append(f"{h.joint} load {h.load_pct:.0f}% (max {safety.max_load_pct:g})")
        if h.voltage_v < safety.min_voltage_v:
            problems.append(f"{h.joint} supply {h.voltage_v:.1f} V (min {safety.min_voltage_v:g})")
        elif h.voltage_v > safety.max_voltage_v:
            problems.append(f"{h.joint} supply {h.voltage_v:.1f} V (max {safety.max_voltage_v:g})")
    return "; ".join(problems)


HEALTH_REMEDY = (
    "Let the servos cool, remove whatever blocks the arm, or check the power supply (a servo that reports a "
    "fault keeps it until the arm is power-cycled)"
)
HEALTH_FIX = f"{HEALTH_REMEDY}, then re-arm. Thresholds are in [safety] of lepetpal.toml."

