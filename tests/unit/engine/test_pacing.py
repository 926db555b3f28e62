"""The pacer's slowed playback, tick by tick with the real plan queue: inference back to back, as the
engine runs it, and one chunk that comes in much later than the ones before it."""

from __future__ import annotations

import numpy as np
import pytest

from lepetpal_tui.engine import pacing
from lepetpal_tui.engine.chunks import ChunkQueue
from lepetpal_tui.settings import ControlSettings


def _run(latencies: list[int]) -> tuple[int, list[float]]:
    """(starved ticks, speed per tick) for chunks of 50 that take `latencies` ticks each, back to back."""
    control = ControlSettings()
    pacer = pacing.Pacer(control, 1.0 / control.rate_hz, lambda: 50, lambda *args: None)
    queue = ChunkQueue()
    queue.reset(0)
    pending = iter(latencies)
    lands_at: int | None = 0 + next(pending)
    pacer.infer_obs_tick = obs_tick = 0
    first, starved, speeds = True, 0, []
    for k in range(sum(latencies)):
        if lands_at is not None and lands_at <= k:
            pacer.latency_ticks.append(max(0, queue.next_tick - obs_tick - 1))
            queue.merge(np.zeros((50, 6)), obs_tick, control.blend_steps, min_keep=pacer.keep_ticks(),
                        max_lag=pacer.max_lag_ticks)
            first, lands_at = False, None
            latency = next(pending, None)
            pacer.infer_obs_tick = None if latency is None else k
            if latency is not None:
                lands_at, obs_tick = k + latency, k
        speed = pacer.speed(k, queue, first)
        if queue.pop(k, speed) is None and not first:
            starved += 1
        if not first:
            speeds.append(speed)
    return starved, speeds


STEADY_THEN_LATE = [39] * 10 + [62] + [39] * 6  # one chunk 1.6x the others, as a background job makes it


def test_a_late_chunk_stretches_the_plan_instead_of_running_it_dry() -> None:
    starved, speeds = _run(STEADY_THEN_LATE)
    _, steady = _run([39] * 17)
    assert starved == 0
    assert min(speeds) < 0.5 < min(steady)  # it slowed down while the chunk was late ...
    assert speeds[-1] == pytest.approx(steady[-1])  # ... and is back at the steady speed after it


def test_without_the_stretch_the_same_late_chunk_starves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expecting a late chunk at the next tick (the pacer before OVERDUE_FRACTION) plays on at the steady
    speed until the plan is gone."""
    monkeypatch.setattr(pacing, "OVERDUE_FRACTION", 0.0)
    starved, _ = _run(STEADY_THEN_LATE)
    assert starved > 0


def test_steady_latencies_play_at_the_same_speed_with_or_without_the_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    starved, stretched = _run([39] * 12)
    monkeypatch.setattr(pacing, "OVERDUE_FRACTION", 0.0)
    _, plain = _run([39] * 12)
    assert starved == 0
    assert np.median(stretched) == pytest.approx(np.median(plain))
    # 39-tick chunks of 50 actions, 4 kept late: (50 + 4) / (2 * (38 ticks x 1.15 headroom + 2)) = 54 / 91.4.
    assert np.median(stretched) == pytest.approx(0.5908, abs=1e-3)
