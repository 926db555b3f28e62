"""Queue of future actions indexed by absolute control-tick number, and the splice of a new chunk.

Indexing by tick number (not by position) is what makes late chunks line up: a chunk computed from the
observation read at tick k has its action i meant for tick k + 1 + i (the soonest an action can reach the
arm is the tick after the one whose joints were read). Actions whose tick has already passed when the chunk
arrives are dropped; the rest are blended into what is still queued over `blend_steps` ticks so the goal
never jumps between the old plan and the new one.
"""

from __future__ import annotations

import threading
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


class ChunkQueue:
    """Thread-safe: the inference thread merges, the actuator thread pops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = 0  # tick number of self._actions[0]
        self._actions: FloatArray = np.empty((0, 6), dtype=np.float64)

    def clear(self) -> None:
        with self._lock:
            self._actions = np.empty((0, 6), dtype=np.float64)

    def depth(self, tick: int) -> int:
        """Actions queued for `tick` and later."""
        with self._lock:
            return max(0, self._start + len(self._actions) - max(tick, self._start))

    def pop(self, tick: int) -> FloatArray | None:
        """The action for `tick`, or None when the queue holds none (starved); earlier ones are discarded."""
        with self._lock:
            offset = tick - self._start
            if offset < 0 or offset >= len(self._actions):
                if offset >= len(self._actions):
                    self._actions = self._actions[:0]
                    self._start = tick + 1
                return None
            action: FloatArray = self._actions[offset].copy()
            self._actions = self._actions[offset + 1 :]
            self._start = tick + 1
            return action

    def reset(self, next_tick: int) -> None:
        """Empty the queue; `next_tick` is the next tick the actuator will pop."""
        with self._lock:
            self._actions = np.empty((0, 6), dtype=np.float64)
            self._start = next_tick

    @property
    def next_tick(self) -> int:
        with self._lock:
            return self._start

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
