"""Joint-space macros (home, throw): precondition check and a per-tick trajectory.

The trajectory is a plain list of goals, one per tick, that the engine feeds through the same safety
filter as policy actions, so a macro can never move faster or further than the policy could.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from lepetpal_tui.settings import JOINT_NAMES, MacroSettings

FloatArray = npt.NDArray[np.float64]


def macro_refusal(
    name: str, macros: Mapping[str, MacroSettings], measured: FloatArray | None, estopped: bool
) -> str:
    """Why macro `name` may not run now, or "" when it may."""
    if name not in macros:
        known = ", ".join(sorted(macros)) or "none"
        return f'No macro named "{name}" (configured: {known}). Add it under [macros.{name}] in lepetpal.toml.'
    if estopped:
        return f'Macro "{name}" refused: the arm is e-stopped. Re-arm first.'
    macro = macros[name]
    if not macro.waypoints:
        return f'Macro "{name}" has no waypoints. Set [macros.{name}] waypoints in lepetpal.toml.'
    if measured is None:
        return f'Macro "{name}" refused: the joints have not been read yet (arm not connected).'
    if macro.start_pose:
        dist = np.abs(np.asarray(measured, dtype=np.float64) - np.asarray(macro.start_pose, dtype=np.float64))
        worst = int(np.argmax(dist))
        if dist[worst] > macro.start_tolerance:
            return (
                f'Macro "{name}" refused: {JOINT_NAMES[worst]} is {dist[worst]:.1f} away from the start pose '
                f"(tolerance {macro.start_tolerance:g}). Run the home macro or move the arm closer first."
            )
    return ""


def plan_macro(macro: MacroSettings, start: FloatArray, rate_hz: float) -> FloatArray:
    """Goals for each tick: linear from `start` through every waypoint, `seconds_per_waypoint` each."""
    steps = max(1, round(macro.seconds_per_waypoint * rate_hz))
    points = [np.asarray(start, dtype=np.float64)] + [np.asarray(w, dtype=np.float64) for w in macro.waypoints]
    segments = []
    for a, b in itertools.pairwise(points):
        frac = (np.arange(1, steps + 1, dtype=np.float64) / steps)[:, None]
        segments.append(a + (b - a) * frac)
    return np.concatenate(segments)
