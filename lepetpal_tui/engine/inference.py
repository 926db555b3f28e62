"""The inference thread: when the queue runs low, compute the next chunk from the latest joints and frames
and splice it into the queue.

It never touches the bus. A chunk computed under an old epoch (stopped, e-stopped or restarted while it
was computed) is dropped; one with the wrong shape or non-finite values holds the arm.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import numpy as np

from lepetpal_tui.engine.camera_watch import CameraWatch
from lepetpal_tui.engine.control import ACTIVE, Control
from lepetpal_tui.engine.pacing import Pacer
from lepetpal_tui.wire import ActionChunk, ChunkSample, EngineState, EventKind, HoldCause, Observation

DEFAULT_CHUNK = 50


class PolicyLike(Protocol):
    """What the engine needs from a policy (`policy.load.ChunkPolicy`, the policy process's proxy)."""

    chunk_length: int

    def infer(self, obs: Observation) -> ActionChunk: ...
    def reset(self) -> None: ...


class Inference:
    def __init__(self, control: Control, pacer: Pacer, cameras: CameraWatch) -> None:
        self._c = control
        self._pacer = pacer
        self._cameras = cameras
        self.policy: PolicyLike | None = None

    def chunk_len(self) -> int:
        n = self.policy.chunk_length if self.policy is not None else DEFAULT_CHUNK
        return min(n, self._c.settings.model.actions_per_chunk)

    def run(self, stopping: threading.Event) -> None:
        merged = False
        while not stopping.is_set():
            if not merged:
                # Right after a merge, look again at once: waiting for the next tick would add up to a
                # period to every chunk's latency, which is what starves a policy as slow as half a chunk.
                self._c.infer_wake.wait(0.05)
                self._c.infer_wake.clear()
            try:
                merged = self._next_chunk()
            except Exception as exc:  # a bug must not leave a run that no chunk will ever feed: hold, report
                merged = False
                self._pacer.infer_obs_tick = None
                if self._c.state in ACTIVE:  # never over an e-stop's latch; once, not every 50 ms
                    self._c.halt(EngineState.ERROR, f"internal error in inference: {exc}", HoldCause.FAULT)
                    self._c.event("error", f"Inference loop error: {exc!r}. Holding.",
                                  "Please report this with the session log; re-arm to retry.", EventKind.INTERNAL)

    def _next_chunk(self) -> bool:
        """Infer and merge the next chunk when one is due; whether one was merged."""
        policy = self.policy
        assert policy is not None
        c = self._c
        with c.lock:
            state, epoch, task = c.state, c.epoch, c.task
            measured, obs_tick = c.measured, c.measured_tick
            first = c.awaiting_first_chunk
        if state not in ACTIVE or measured is None:
            return False
        chunk_len = self.chunk_len()
        if not first and not self._pacer.chunk_due(c.queue.depth(c.queue.next_tick)):
            return False
        images = self._cameras.frames(state, epoch)
        if images is None:
            return False
        if c.reset_policy:
            c.reset_policy = False
            policy.reset()
        obs = Observation(joints=measured.copy(), images=images, task=task, timestamp=time.monotonic())
        self._pacer.infer_obs_tick = obs_tick
        try:
            chunk = policy.infer(obs)
        except Exception as exc:
            self._pacer.infer_obs_tick = None
            if c.epoch == epoch:
                c.halt(EngineState.ERROR, f"inference failed: {exc}", HoldCause.FAULT)
                c.event("error", f"Inference failed: {exc}. Holding.", "See the log; re-arm to retry.",
                        EventKind.INFERENCE_FAULT)
            return False
        merged = self._merge(chunk, epoch, obs_tick, task, chunk_len)
        self._pacer.infer_obs_tick = None
        return merged

    def _merge(self, chunk: ActionChunk, epoch: int, obs_tick: int, task: str, chunk_len: int) -> bool:
        c = self._c
        actions = np.asarray(chunk.actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != 6 or len(actions) == 0:
            reason = f"policy returned actions of shape {actions.shape}, expected (n, 6)"
        elif not np.all(np.isfinite(actions)):
            reason = "policy returned non-finite actions (NaN or inf)"
        else:
            reason = ""
        with c.lock:
            if c.epoch != epoch:
                return False  # stopped, e-stopped or restarted while inferring: this chunk is stale
            if not reason:
                # Latency in ticks of the last few chunks: keep that many actions (+2) when allowed to
                # run a little late, so the next chunk lands before the queue runs dry.
                self._pacer.latency_ticks.append(max(0, c.queue.next_tick - obs_tick - 1))
                info = c.queue.merge(
                    actions[:chunk_len],
                    obs_tick,
                    c.settings.control.blend_steps,
                    min_keep=self._pacer.keep_ticks(),
                    max_lag=self._pacer.max_lag_ticks,
                )
                c.counters.chunks += 1
                c.awaiting_first_chunk = False  # from now on an empty queue is starvation
        if reason:
            c.halt(EngineState.ERROR, reason, HoldCause.FAULT)
            c.event("error", f"Holding: {reason}.", "Check the checkpoint and its statistics; re-arm to retry.",
                    EventKind.POLICY_OUTPUT_FAULT)
            return False
        sample = ChunkSample(
            t=time.monotonic(),
            timing=chunk.timing,
            length=min(len(actions), chunk_len),
            queue_depth_at_merge=info.depth_before,
            task=task,
            source=chunk.source,
        )
        c.coalescer.add_chunk(sample)
        if c.log is not None:
            c.log.chunk(sample)
        return True
