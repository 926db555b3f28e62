"""Safety filter, chunk splicing and macro planning: pure functions, checked exhaustively."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lepetpal_tui.engine.chunks import ChunkQueue, playback_speed, sustainable_speed
from lepetpal_tui.engine.macros import macro_refusal, plan_macro
from lepetpal_tui.engine.safety import SafetyFilter, health_problem
from lepetpal_tui.settings import ArmSettings, MacroSettings, SafetySettings, Settings
from lepetpal_tui.wire import ServoHealth

ZERO = np.zeros(6)


def test_filter_clamps_limits_step_and_gripper() -> None:
    f = SafetyFilter(dataclasses.replace(ArmSettings(), max_step_per_tick=2.0))
    r = f.apply(np.array([500.0, -500.0, 1.0, 0.0, 0.0, 150.0]), ZERO)
    assert r.goal is not None
    assert np.allclose(r.goal, [2.0, -2.0, 1.0, 0.0, 0.0, 2.0])
    assert r.clamped == (True, True, False, False, False, True)
    # Far from the previous goal but within limits: only the step limit applies.
    prev = np.array([109.0, 0, 0, 0, 0, 99.5])
    r = f.apply(np.array([130.0, 0, 0, 0, 0, 120.0]), prev)
    assert r.goal is not None
    assert r.goal[0] == pytest.approx(110.0)  # joint limit, not prev + 2
    assert r.goal[5] == pytest.approx(100.0)  # gripper 0..100


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_filter_refuses_non_finite(bad: float) -> None:
    f = SafetyFilter(ArmSettings())
    action = np.zeros(6)
    action[3] = bad
    r = f.apply(action, ZERO)
    assert r.goal is None
    assert "wrist_flex" in r.reason


def test_filter_ramps_from_measured_pose() -> None:
    f = SafetyFilter(dataclasses.replace(ArmSettings(), max_step_per_tick=3.0))
    measured = np.array([-50.0, 10, 10, 10, 10, 50])
    target = np.array([50.0, 10, 10, 10, 10, 50])
    prev = measured
    seen = []
    for _ in range(40):
        r = f.apply(target, prev)
        assert r.goal is not None
        assert np.max(np.abs(r.goal - prev)) <= 3.0 + 1e-9
        prev = r.goal
        seen.append(prev[0])
    assert seen[0] == pytest.approx(-47.0)
    assert seen[-1] == pytest.approx(50.0)


def test_filter_rejects_wrong_shape() -> None:
    r = SafetyFilter(ArmSettings()).apply(np.zeros(5), ZERO)
    assert r.goal is None and "shape" in r.reason


def test_health_problem_names_servo_and_threshold() -> None:
    s = SafetySettings()
    ok = tuple(ServoHealth(j, 30, 10, 12) for j in ("a", "b"))
    assert health_problem(ok, s) == ""
    hot = (ServoHealth("elbow_flex", 70, 10, 12), ServoHealth("gripper", 30, 95, 3.9))
    msg = health_problem(hot, s)
    assert "elbow_flex at 70 °C" in msg and "gripper load 95%" in msg and "3.9 V" in msg


def test_chunk_queue_pop_and_starve() -> None:
    q = ChunkQueue()
    q.reset(10)
    assert q.pop(10) is None
    q.reset(11)
    q.merge(np.arange(30, dtype=float).reshape(5, 6), obs_tick=10, blend_steps=0)
    assert q.depth(11) == 5
    a = q.pop(11)
    assert a is not None and a[0] == 0.0
    a = q.pop(13)  # tick 12 was skipped (overrun): its action is discarded
    assert a is not None and a[0] == 12.0
    assert q.depth(14) == 2


def test_merge_drops_past_actions_and_blends() -> None:
    q = ChunkQueue()
    q.reset(0)
    old = np.zeros((20, 6))
    q.merge(old, obs_tick=-1, blend_steps=0)
    for k in range(10):
        q.pop(k)
    # Chunk computed from the joints of tick 4, arriving when tick 10 is next: actions for ticks 5..9 are past.
    new = np.tile(np.arange(20, dtype=float)[:, None] + 100.0, (1, 6))  # value 100+i for tick 5+i
    info = q.merge(new, obs_tick=4, blend_steps=4)
    assert info.dropped == 5 and info.depth_before == 10 and info.blended == 4
    got = [q.pop(k) for k in range(10, 25)]
    vals = [g[0] for g in got if g is not None]
    assert len(vals) == 15
    # Blend weights 1/5..4/5 from old (0) to new (105, 106, ...), then the new chunk exactly.
    assert vals[0] == pytest.approx(105 * 0.2)
    assert vals[3] == pytest.approx(108 * 0.8)
    assert vals[4:] == pytest.approx([109.0 + i for i in range(11)])


def test_merge_blend_has_no_jump_for_consistent_plans() -> None:
    """Two chunks of the same time-indexed trajectory splice into that same trajectory."""
    q = ChunkQueue()
    q.reset(1)
    traj = lambda t0, n: np.tile((np.arange(t0, t0 + n, dtype=float) * 0.5)[:, None], (1, 6))  # noqa: E731
    q.merge(traj(1, 50), obs_tick=0, blend_steps=8)
    out = [q.pop(k) for k in range(1, 31)]
    q.merge(traj(21, 50), obs_tick=20, blend_steps=8)  # late by 10 ticks
    out += [q.pop(k) for k in range(31, 60)]
    vals = np.array([o[0] for o in out if o is not None])
    assert len(vals) == 59
    assert np.allclose(np.diff(vals), 0.5)


def test_merge_of_entirely_stale_chunk_keeps_old_plan() -> None:
    q = ChunkQueue()
    q.reset(100)
    q.merge(np.ones((10, 6)), obs_tick=99, blend_steps=2)
    info = q.merge(np.full((3, 6), 9.0), obs_tick=50, blend_steps=2)
    assert info.dropped == 3 and info.depth_after == 10


def test_macro_refusals() -> None:
    macros = Settings().macros
    assert "No macro named" in macro_refusal("dance", macros, ZERO, False)
    assert "e-stopped" in macro_refusal("home", macros, ZERO, True)
    far = np.array([0.0, 60, 0, 0, 0, 0])
    why = macro_refusal("throw", macros, far, False)
    assert "shoulder_lift" in why and "60.0" in why
    assert macro_refusal("throw", macros, ZERO, False) == ""
    assert macro_refusal("home", macros, far, False) == ""  # home has no start pose


def test_plan_macro_passes_every_waypoint() -> None:
    m = MacroSettings(waypoints=[[10.0] * 6, [0.0] * 6], seconds_per_waypoint=0.5)
    goals = plan_macro(m, np.zeros(6), rate_hz=30)
    assert goals.shape == (30, 6)
    assert np.allclose(goals[14], 10.0) and np.allclose(goals[-1], 0.0)


def test_merge_into_empty_queue_keeps_whole_chunk() -> None:
    """First chunk (or after starving): the arm held, so the chunk runs from its first action."""
    q = ChunkQueue()
    q.reset(40)
    info = q.merge(np.arange(60, dtype=float).reshape(10, 6), obs_tick=10, blend_steps=3)
    assert info.dropped == 0 and info.depth_after == 10
    a = q.pop(40)
    assert a is not None and a[0] == 0.0


def test_merge_runs_slightly_late_rather_than_starve() -> None:
    """Latency of half a chunk: strict alignment would leave 25 actions for a 25-tick inference."""
    q = ChunkQueue()
    q.reset(0)
    q.merge(np.zeros((50, 6)), obs_tick=-1, blend_steps=0)
    for k in range(35):
        q.pop(k)
    new = np.tile(np.arange(50, dtype=float)[:, None], (1, 6))
    info = q.merge(new, obs_tick=9, blend_steps=0, min_keep=27, max_lag=4)  # 25 ticks late
    assert info.late == 2 and info.dropped == 23 and info.depth_after == 27
    # max_lag bounds it: a slower policy still drops all but max_lag of its past actions.
    q2 = ChunkQueue()
    q2.reset(0)
    q2.merge(np.zeros((50, 6)), obs_tick=-1, blend_steps=0)
    for k in range(45):
        q2.pop(k)
    info = q2.merge(new, obs_tick=4, blend_steps=0, min_keep=45, max_lag=4)
    assert info.late == 4 and info.dropped == 36


def _line(n: int, start: float = 0.0) -> np.ndarray:
    """n actions whose every joint is start, start + 1, ... (one unit per plan step)."""
    return np.repeat((start + np.arange(n, dtype=float))[:, None], 6, axis=1)


def test_slowed_playback_interpolates_between_plan_steps() -> None:
    q = ChunkQueue()
    q.merge(_line(10), obs_tick=-1, blend_steps=0)
    got = [q.pop(k, 0.5) for k in range(8)]
    assert [None if a is None else float(a[0]) for a in got] == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]
    assert q.plan_left(8) == pytest.approx(6.0) and q.depth(8) == 6
    # Back to full speed: one plan step per tick again, from where the cursor is.
    assert [float(q.pop(k)[0]) for k in range(8, 11)] == [4, 5, 6]  # type: ignore[index]


def test_slowed_playback_runs_dry_only_at_the_end_of_the_plan() -> None:
    q = ChunkQueue()
    q.merge(_line(4), obs_tick=-1, blend_steps=0)
    got = [q.pop(k, 0.25) for k in range(16)]
    assert all(a is not None for a in got)  # 4 plan steps last 16 ticks at a quarter speed
    assert q.pop(16, 0.25) is None
    steps = np.diff([float(a[0]) for a in got[:13] if a is not None])
    assert np.allclose(steps, 0.25)  # smooth: the same change every tick


def test_chunk_is_placed_by_the_plan_position_of_its_observation() -> None:
    """While slowed, the tick number is not the plan position: a chunk computed from the joints read at
    tick 8 (plan step 4 at half speed) starts at plan step 5, so the arm does not skip ahead."""
    q = ChunkQueue()
    q.merge(_line(20), obs_tick=-1, blend_steps=0)
    for k in range(12):
        q.pop(k, 0.5)  # tick 8 was at plan position 4.0
    info = q.merge(_line(20, start=100.0), obs_tick=8, blend_steps=0)
    # Now (plan position 6) is one step past the new plan's first action (step 5): dropped as past.
    assert info.dropped == 1
    nxt = q.pop(12, 0.5)
    assert nxt is not None and float(nxt[0]) == 101.0


def test_sustainable_speed_keeps_chunk_after_chunk_fed() -> None:
    assert sustainable_speed(50, 4, 20) == 1.0  # inference well under half a chunk: full speed
    assert sustainable_speed(50, 4, 62) == pytest.approx(54 / 124)  # the 2-core AVX2 full-size case
    assert sustainable_speed(50, 4, 0) == 1.0


def test_playing_at_the_sustainable_speed_never_runs_dry() -> None:
    """Simulated: chunks of 50 computed back to back, each 60 ticks late. At the sustainable speed the
    queue never empties; at the speed that just reaches the next chunk (0.83) it does."""

    def starved_ticks(speed: float) -> int:
        q = ChunkQueue()
        q.merge(_line(50), obs_tick=-1, blend_steps=0)
        starved, obs = 0, 0
        for k in range(1200):
            if q.pop(k, speed) is None:
                starved += 1
            if k == obs + 60:  # the chunk computed from tick `obs` lands; the next starts from here
                q.merge(_line(50, start=float(k)), obs_tick=obs, blend_steps=0, min_keep=62, max_lag=4)
                obs = k
        return starved

    assert starved_ticks(sustainable_speed(50, 4, 62)) == 0
    assert starved_ticks(50 / 60) > 10


def test_playback_speed_keeps_the_plan_from_running_dry() -> None:
    assert playback_speed(40, 30, 0.25) == 1.0  # lasts anyway
    assert playback_speed(15, 30, 0.25) == pytest.approx(0.5)
    assert playback_speed(3, 30, 0.25) == 0.25  # never below the floor
    assert playback_speed(0, 0, 0.25) == 1.0
