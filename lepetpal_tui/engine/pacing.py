"""When to compute the next chunk, and how fast to play the plan while it computes.

When inference is slower than a chunk lasts, the actuator plays the queued plan slower (the speed
factor) so the arm keeps moving instead of stopping between chunks, never below `[control] min_speed`.
The figures come from the last few chunks' latencies, in ticks from observation to merge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from lepetpal_tui.engine.chunks import ChunkQueue, playback_speed, sustainable_speed
from lepetpal_tui.settings import ControlSettings
from lepetpal_tui.wire import EventKind, Level

MARGIN_TICKS = 2
# Slowed playback plans for chunks this much slower than the recent ones: a chunk now and then takes that
# much longer than the last three (3.5 s against a 2.8 s median in a 60 s full-size run on the AVX2 EPYC).
# Replayed through this pacer (bench/pacing_replay.py: five recorded 60 s runs, and spikes): 1.10 plays
# 4-5 % faster, 0 starved ticks up to 1.6x spikes but a deeper slow-down while a chunk is late; 1.05
# starves at 1.6x; 1.25 costs 7-8 % of speed. With a busy loop beside inference (2 s in every 10) 1.10
# starved 3-17 ticks, 1.15 0-6, 1.25 none. A headroom learned from the recent latencies was no better.
LATENCY_HEADROOM = 1.15
MAX_LAG_S = 0.15  # a new plan may run this much late rather than starve (see ChunkQueue.merge)
# A chunk later than the recent ones is expected this fraction of its time so far from now, not at the
# next tick: the plan then stretches while the chunk is late, instead of playing on at the steady speed
# and running dry. Replayed (bench/pacing_replay.py): starved ticks with every 25th chunk 1.6x slower
# 17 -> 0 (2x slower: 91 -> 33), 1 -> 0 on a recorded run with a load beside it, the same speed p50 on
# every series; the cost is a deeper slow-down while a chunk is late (speed min 0.85 -> 0.54 on a steady run).
# 0.5 starved no tick even beside a busy loop 2 s in every 10, but cost up to 3 % of the plan steps played
# on quiet runs (0.25: at most 0.4 %, and 0-5 starved ticks a minute beside that loop, against 13-39).
OVERDUE_FRACTION = 0.25

Report = Callable[[Level, str, str, EventKind], None]


class Pacer:
    """Shared by the actuator (speed, chunk due) and inference (latency, the observation in flight)."""

    def __init__(self, control: ControlSettings, period_s: float, chunk_len: Callable[[], int],
                 report: Report) -> None:
        self._control = control
        self._period_s = period_s
        self._chunk_len = chunk_len
        self._report = report
        self.latency_ticks: deque[int] = deque(maxlen=3)
        self.infer_obs_tick: int | None = None  # the observation tick of the inference in progress
        self.max_lag_ticks = max(2, round(MAX_LAG_S * control.rate_hz))
        self._floor_warned = False

    def new_run(self) -> None:
        self._floor_warned = False

    def chunk_due(self, depth: int) -> bool:
        """Whether to compute the next chunk now: the queue is down to `chunk_threshold` of a chunk or,
        when slowing down is allowed, to what the last chunks took to compute (start in time)."""
        control = self._control
        if depth <= control.chunk_threshold * self._chunk_len():
            return True
        latency = self.latency_ticks
        return control.when_inference_is_slow == "slow_down" and bool(latency) and depth <= max(latency) + MARGIN_TICKS

    def keep_ticks(self) -> int:
        """Actions of the old plan a merge keeps, so the next chunk lands before the queue runs dry."""
        return max(self.latency_ticks) + MARGIN_TICKS

    def speed(self, k: int, queue: ChunkQueue, awaiting_first_chunk: bool) -> float:
        """Plan steps to play this tick: below 1 when the queued plan would run out before the next chunk
        lands (inference slower than the plan), so the arm keeps moving instead of stopping."""
        control = self._control
        if control.when_inference_is_slow == "hold" or awaiting_first_chunk or not self.latency_ticks:
            return 1.0
        latency = max(self.latency_ticks)
        started = self.infer_obs_tick  # read once: the inference thread sets and clears it
        elapsed = k - started if started is not None else 0
        remaining = latency - elapsed
        ticks = max(1, remaining, OVERDUE_FRACTION * elapsed) + MARGIN_TICKS
        left = queue.plan_left(k)
        steady = sustainable_speed(self._chunk_len(), self.max_lag_ticks, latency * LATENCY_HEADROOM + MARGIN_TICKS)
        speed = max(control.min_speed, min(playback_speed(left, ticks, control.min_speed), steady))
        # Warned when the plan runs out even at the floor: structurally (steady), or with the chunk due now.
        runs_out = left < (max(1, remaining) + MARGIN_TICKS) * control.min_speed
        too_slow = steady < control.min_speed or (speed <= control.min_speed and runs_out)
        if too_slow and not self._floor_warned:
            self._floor_warned = True
            self._report(
                "warning",
                f"Inference takes {latency * self._period_s:.1f} s a chunk: even at {control.min_speed:g}x the "
                "plan runs out, so the arm holds between chunks.",
                "Use a faster inference path (see `lepetpal model check`), fewer flow steps, or a lower "
                "[control] min_speed.",
                EventKind.SLOW_INFERENCE,
            )
        return speed
