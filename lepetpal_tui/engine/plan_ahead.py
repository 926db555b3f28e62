"""The plan ahead: the goals the actuator will send over the next second or two, after the safety filter.

Why: an operator should see where the arm is about to go before it goes. The preview replays what the
tick would do (pop the chunk queue at the current playback speed, filter against the previous goal)
on copies, so nothing here touches the queue's cursor, the bus or the tick. It runs in the telemetry
publisher (about 20 times a second), never on the 30 Hz path: 45 filter steps cost well under a
millisecond. In dry-run these are the would-be goals. A new chunk merged later changes the plan: this is
"where the current plan goes", not a promise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lepetpal_tui.engine.safety import SafetyFilter

FloatArray = npt.NDArray[np.float64]

HORIZON_S = 1.5  # how far ahead the UI shows
SAMPLES = 6  # goals sent to the UI over the horizon (every HORIZON_S / SAMPLES seconds)


def preview_goals(
    actions: FloatArray, safety: SafetyFilter, previous: FloatArray | None, rate_hz: float,
    horizon_s: float = HORIZON_S, samples: int = SAMPLES,
) -> tuple[tuple[float, ...], ...]:
    """Filter the upcoming `actions` (one row per tick, as the tick would pop them) from `previous`
    (the last goal sent) and return `samples` goals evenly spaced over `horizon_s` (fewer when the plan
    ends sooner; () when there is no plan or a step would hold: the tick would stop there too)."""
    if previous is None or len(actions) == 0 or samples <= 0:
        return ()
    ticks = min(len(actions), max(1, round(horizon_s * rate_hz)))
    every = max(1, ticks // samples)
    prev = np.asarray(previous, dtype=np.float64)
    out: list[tuple[float, ...]] = []
    for i in range(ticks):
        result = safety.apply(actions[i], prev)
        if result.goal is None:
            break
        prev = result.goal
        if (i + 1) % every == 0 and len(out) < samples:
            out.append(tuple(round(float(v), 3) for v in prev))
    return tuple(out)


def macro_actions(goals: Sequence[FloatArray] | FloatArray, index: int) -> FloatArray:
    """The waypoints a macro still has to play (one per tick)."""
    rest = np.asarray(goals, dtype=np.float64)[index:]
    return rest.reshape(-1, 6) if rest.size else np.empty((0, 6), dtype=np.float64)
