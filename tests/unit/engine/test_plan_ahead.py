"""The plan ahead: what the tick will send, after the safety filter, without touching the queue."""

from __future__ import annotations

import numpy as np

from lepetpal_tui.engine.chunks import ChunkQueue
from lepetpal_tui.engine.plan_ahead import macro_actions, preview_goals
from lepetpal_tui.engine.safety import SafetyFilter
from lepetpal_tui.settings import ArmSettings


def _queue(actions: np.ndarray) -> ChunkQueue:
    q = ChunkQueue()
    q.reset(0)
    q.merge(actions, 0, 0)
    return q


def test_peek_is_what_pop_returns_and_pops_nothing() -> None:
    actions = np.arange(60, dtype=np.float64)[:, None] * np.ones(6)
    for speed in (1.0, 0.5):
        q = _queue(actions)
        q.pop(0, speed)
        depth = q.plan_left(1)
        ahead = q.peek(12, speed)
        assert q.plan_left(1) == depth  # peeking did not move the cursor
        popped = np.array([q.pop(k, speed) for k in range(1, 13)])
        np.testing.assert_allclose(ahead, popped)


def test_preview_goes_through_the_safety_filter() -> None:
    arm = ArmSettings(max_step_per_tick=2.0)
    safety = SafetyFilter(arm)
    target = np.array([30.0, 0.0, 0.0, 0.0, 0.0, 50.0])
    plan = np.repeat(target[None], 45, axis=0)
    goals = preview_goals(plan, safety, previous=np.zeros(6), rate_hz=30.0)
    assert len(goals) == 6
    pan = [g[0] for g in goals]
    # 45 ticks at 2 degrees per tick at most: a ramp towards 30, every 7 ticks, never a jump to 30.
    assert pan == sorted(pan) and pan[0] <= 7 * 2.0 + 1e-9 and pan[-1] == 30.0
    _lo, hi = arm.limits["shoulder_pan"]
    too_far = np.repeat(np.array([[hi + 50, 0, 0, 0, 0, 0]], dtype=np.float64), 45, axis=0)
    assert max(g[0] for g in preview_goals(too_far, safety, np.full(6, 0.0), 30.0)) <= hi


def test_no_plan_no_preview_and_nan_stops_it() -> None:
    safety = SafetyFilter(ArmSettings())
    assert preview_goals(np.empty((0, 6)), safety, np.zeros(6), 30.0) == ()
    assert preview_goals(np.zeros((45, 6)), safety, None, 30.0) == ()
    bad = np.zeros((45, 6))
    bad[10:] = np.nan
    assert len(preview_goals(bad, safety, np.zeros(6), 30.0)) == 1  # the tick would hold at step 11
    assert macro_actions(np.zeros((5, 6)), 3).shape == (2, 6)
    assert macro_actions(np.zeros((5, 6)), 5).shape == (0, 6)
