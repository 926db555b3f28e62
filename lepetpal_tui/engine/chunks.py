"""Queue of future actions indexed by absolute control-tick number, and the splice of a new chunk.

Indexing by tick number (not by position) is what makes late chunks line up: a chunk computed from the
observation read at tick k has its action i meant for tick k + 1 + i (the soonest an action can reach the
arm is the tick after the one whose joints were read). Actions whose tick has already passed when the chunk
arrives are dropped; the rest are blended into what is still queued over `blend_steps` ticks so the goal
never jumps between the old plan and the new one.

Slowed playback: when inference is slower than the plan lasts, the actuator plays the plan at a speed
factor below 1 (see `playback_speed`). The queue then keeps a fractional plan cursor: each tick advances
it by the speed and the action is interpolated between the two plan steps around it, so the 30 Hz goals
stay smooth. A chunk is placed by the plan position its observation was taken at (remembered per tick),
which at speed 1 is the tick number itself: then everything is exactly tick-indexed.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MergeInfo:
    dropped: int  # actions of the new chunk already in the past
    late: int  # past actions kept anyway (ticks the new plan runs late), see `merge`
    blended: int  # actions mixed with the previous plan
    depth_before: int  # queued actions left when the chunk arrived
    depth_after: int


def playback_speed(plan_left: float, ticks_to_next_chunk: float, floor: float) -> float:
    """The speed factor (plan steps per tick) at which `plan_left` queued steps last until the next chunk
    lands, `ticks_to_next_chunk` from now; 1 when they last anyway, never below `floor`."""
    if ticks_to_next_chunk <= 0 or plan_left >= ticks_to_next_chunk:
        return 1.0
    return max(floor, min(1.0, plan_left / ticks_to_next_chunk))


def sustainable_speed(chunk_len: int, max_lag: int, latency_ticks: float) -> float:
    """The fastest playback that inference `latency_ticks` long can keep fed, chunk after chunk.

    With inference back to back, a chunk computed from plan position p lands at p + s*L; the next one,
    computed from there, lands at p + 2*s*L, and by then the first chunk (N actions from p, plus up to
    `max_lag` kept late) must not have run out: s <= (N + lag) / (2 L). Playing faster only looks
    better: each chunk then lands with most of its actions already in the past (dropped), the queue runs
    dry and the arm stops, measured on the 2-core AVX2 EPYC (2.0 s chunks: 0.83x then starved, in turns).
    """
    if latency_ticks <= 0:
        return 1.0
    return min(1.0, (chunk_len + max_lag) / (2.0 * latency_ticks))


# How many ticks of (tick -> plan position) are remembered to place a chunk: 20 s at 30 Hz, longer than
# any usable inference; an older observation is placed by extrapolation at speed 1.
_HISTORY_TICKS = 600
_EPS = 1e-9


class ChunkQueue:
    """Thread-safe: the inference thread merges, the actuator thread pops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = 0  # plan position of self._actions[0]
        self._actions: FloatArray = np.empty((0, 6), dtype=np.float64)
        self._cursor = 0.0  # plan position of the next pop (fractional while playback is slowed)
        self._next_tick = 0  # the tick of the next pop
        self._history: deque[tuple[int, float]] = deque(maxlen=_HISTORY_TICKS)  # (tick, plan position)

    def clear(self) -> None:
        with self._lock:
            self._actions = np.empty((0, 6), dtype=np.float64)

    def _position(self, tick: int, speed: float) -> float:
        """Plan position of `tick` (a tick after the next one: the skipped ones advance at `speed`)."""
        return self._cursor + speed * max(0, tick - self._next_tick)

    def plan_left(self, tick: int) -> float:
        """Plan steps queued from `tick`'s position on (fractional while slowed)."""
        with self._lock:
            pos = self._position(tick, 1.0)
            return max(0.0, self._start + len(self._actions) - max(pos, self._start))

    def depth(self, tick: int) -> int:
        """Actions queued for `tick` and later (whole plan steps)."""
        return math.floor(self.plan_left(tick) + _EPS)

    def pop(self, tick: int, speed: float = 1.0) -> FloatArray | None:
        """The action for `tick`, or None when the queue holds none (starved); earlier ones are discarded.

        `speed` < 1 plays the plan slower: the cursor advances `speed` plan steps per tick and the action
        is interpolated between the two steps around it.
        """
        with self._lock:
            pos = self._position(tick, speed)
            self._history.append((tick, pos))
            self._next_tick = tick + 1
            self._cursor = pos + speed
            offset = pos - self._start
            n = len(self._actions)
            if offset < -_EPS:  # the plan starts later
                return None
            i = max(0, math.floor(offset + _EPS))
            if i >= n:
                self._actions = self._actions[:0]
                self._start = math.floor(self._cursor + _EPS)
                return None
            frac = offset - i
            if frac > _EPS and i + 1 < n:
                action: FloatArray = (1.0 - frac) * self._actions[i] + frac * self._actions[i + 1]
            else:
                action = self._actions[i].copy()
            done = min(n, max(0, math.floor(self._cursor + _EPS) - self._start))
            self._actions = self._actions[done:]
            self._start += done
            return action

    def peek(self, n: int, speed: float = 1.0) -> FloatArray:
        """The next `n` actions `pop` would return from the next tick on at `speed`, without popping
        (the plan-ahead preview); fewer when the plan ends sooner."""
        with self._lock:
            actions, start, cursor = self._actions, self._start, self._cursor  # merge/pop replace, never edit
        offsets = cursor - start + speed * np.arange(n, dtype=np.float64)
        offsets = offsets[(offsets > -_EPS) & (offsets < len(actions) - _EPS)]  # what pop would not refuse
        i = np.floor(offsets + _EPS).astype(int)
        frac = np.clip(offsets - i, 0.0, 1.0)[:, None]
        j = np.minimum(i + 1, len(actions) - 1)
        out: FloatArray = (1.0 - frac) * actions[i] + frac * actions[j]
        return out

    def reset(self, next_tick: int) -> None:
        """Empty the queue; `next_tick` is the next tick the actuator will pop."""
        with self._lock:
            self._actions = np.empty((0, 6), dtype=np.float64)
            self._start = next_tick
            self._cursor = float(next_tick)
            self._next_tick = next_tick
            self._history.clear()

    @property
    def next_tick(self) -> int:
        with self._lock:
            return self._next_tick

    def _anchor(self, obs_tick: int) -> int:
        """The plan step the observation of `obs_tick` was taken at (its tick number at speed 1)."""
        for tick, pos in reversed(self._history):
            if tick == obs_tick:
                return round(pos)
            if tick < obs_tick:
                break
        return round(self._cursor + (obs_tick - self._next_tick))

    def merge(
        self, actions: FloatArray, obs_tick: int, blend_steps: int, min_keep: int = 0, max_lag: int = 0
    ) -> MergeInfo:
        """Splice a chunk computed from the joints read at `obs_tick` into the queue.

        The queue's cursor (the next tick the actuator pops) is "now": when an old plan is still queued,
        new actions for earlier ticks are dropped, and the first `blend_steps` remaining ones are mixed with the old plan, weight rising
        linearly from the old plan to the new one.
        """
        new = np.asarray(actions, dtype=np.float64).reshape(-1, 6)
        with self._lock:
            obs_tick = self._anchor(obs_tick)  # from here on: plan positions (tick numbers at speed 1)
            now_tick = self._start
            old = self._actions
            depth_before = len(old)
            # With nothing queued the arm has been holding near the pose the chunk was computed from
            # (first chunk, or starved): run the chunk from its start, as LeRobot's synchronous path
            # does. Dropping its "past" actions would throw away motion, or all of it when inference
            # is slower than a chunk.
            past = min(len(new), max(0, now_tick - (obs_tick + 1)))
            # When inference takes about half a chunk, strict alignment leaves exactly enough actions to
            # last until the next chunk and any overhead starves a tick. Keeping up to `max_lag` past
            # actions (running the plan that many ticks late) buys `min_keep` actions of margin.
            dropped = 0 if depth_before == 0 else max(past - max_lag, min(past, len(new) - min_keep))
            dropped = max(0, dropped)
            keep = new[dropped:]
            if len(keep) == 0:
                return MergeInfo(dropped, 0, 0, depth_before, depth_before)
            # The engine reads joints before popping, so obs_tick + 1 <= now_tick + 1: at most the one
            # tick being executed separates them; that gap keeps the old plan.
            gap = max(0, obs_tick + 1 - now_tick)
            lead = old[:gap]
            if len(lead) < gap:  # nothing queued for that tick: start the new plan one tick early
                lead = np.concatenate([lead, np.repeat(keep[:1], gap - len(lead), axis=0)])
            old_tail = old[len(lead) :]
            out = keep.copy()
            blended = min(len(old_tail), len(keep), blend_steps)
            for j in range(blended):
                w = (j + 1) / (blend_steps + 1)
                out[j] = (1.0 - w) * old_tail[j] + w * keep[j]
            self._actions = np.concatenate([lead, out]) if len(lead) else out
            late = past - dropped
            return MergeInfo(dropped, late, blended, depth_before, len(self._actions))
