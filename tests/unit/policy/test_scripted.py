"""ScriptedPolicy: deterministic, inside the default limits, smooth at 30 Hz, aligned across chunks."""

from __future__ import annotations

import numpy as np

from lepetpal_tui.policy.scripted import ScriptedPolicy
from lepetpal_tui.settings import JOINT_NAMES, ArmSettings
from lepetpal_tui.wire import Observation


def _obs(t: float, joints: list[float] | None = None) -> Observation:
    j = np.asarray(joints if joints is not None else [0.0] * 6, dtype=np.float64)
    return Observation(joints=j, images={}, task="throw", timestamp=t)


def test_interface_and_shape() -> None:
    p = ScriptedPolicy(chunk_length=40)
    chunk = p.infer(_obs(100.0))
    assert (p.name, p.device, p.parameters, p.chunk_length) == ("scripted", "cpu", 0, 40)
    assert chunk.actions.shape == (40, 6) and chunk.actions.dtype == np.float64
    assert chunk.task == "throw" and chunk.observed_at == 100.0


def test_deterministic_and_reset() -> None:
    a, b = ScriptedPolicy(), ScriptedPolicy()
    start = [30.0, -20.0, 10.0, 5.0, 0.0, 50.0]
    for t in (5.0, 5.5, 7.0):
        np.testing.assert_array_equal(a.infer(_obs(t, start)).actions, b.infer(_obs(t, start)).actions)
    a.reset()
    first = a.infer(_obs(50.0, start)).actions
    np.testing.assert_allclose(first[0], start, atol=1e-9)  # starts at the measured pose after reset


def test_whole_loop_within_limits_and_smooth() -> None:
    p = ScriptedPolicy(rate_hz=30.0)
    p.infer(_obs(1.0, [80.0, 90.0, -90.0, 90.0, 150.0, 100.0]))  # far from home: the entry move is gentle too
    traj = np.stack([p.pose_at(i / 30.0) for i in range(30 * 40)])
    limits = ArmSettings().limits
    for k, joint in enumerate(JOINT_NAMES):
        lo, hi = limits[joint]
        assert traj[:, k].min() >= lo and traj[:, k].max() <= hi, joint
    step = np.abs(np.diff(traj, axis=0)).max()
    assert step < 3.0, step  # the default max_step_per_tick never has to clip it
    assert np.ptp(traj[:, 5]) > 50  # the gripper really opens and closes
    assert np.ptp(traj[:, 1]) > 40  # and the arm really moves


def test_chunks_computed_ahead_line_up() -> None:
    p = ScriptedPolicy(rate_hz=30.0, chunk_length=50)
    c1 = p.infer(_obs(10.0))
    c2 = p.infer(_obs(10.0 + 20 / 30.0))  # 20 ticks later
    np.testing.assert_allclose(c2.actions[:30], c1.actions[20:], atol=1e-9)
