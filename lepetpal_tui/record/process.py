"""The recorder process: ticks from the engine + frames from the shared ring -> LeRobot dataset episodes.

Runs at nice +15 with one encoder thread, so on a 2-core machine the control loop, the bus and the
policy always win the CPU; it only takes what is left. Threads:
- frames: polls the frame ring (about 200 Hz, a sequence-number check; a copy per new frame) and keeps
  the last few seconds of frames per camera with their capture time.
- intake: reads the engine's messages in order and pairs each tick with, per camera, the newest frame
  captured at or before the tick (what the policy could have seen then). Paired frames wait in a
  bounded in-memory backlog while an episode is being encoded; past the bound they are dropped and
  counted, never blocking anybody.
- main: LeRobot work: `add_frame` as frames come, `save_episode` + `finalize` when an episode ends.

Messages in (tuples, small to pickle): ("ticks", (tick, ...)), one per telemetry batch, each tick
("tick", t, run, task, measured, action, raw, clamped, starved, speed); ("end", run), ("discard", run),
("mark", outcome), ("ring", name), ("quit", on_quit). Out: ("status", {RecordingStatus fields}) and
("event", level, text).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import queue as queue_mod
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lepetpal_tui.settings import Settings

RECORDER_NICE = 15
_BACKLOG_BYTES = 512 * 1024 * 1024  # paired frames waiting while an episode encodes
_HISTORY_S = 3.0  # frames kept per camera (pairing happens ~0.1 s after the tick)
_POLL_S = 0.005
_FIRST_FRAME_S = 2.0  # how long the recorder waits for the engine's first frames before taking ticks


LOW_DISK_BYTES = 200 * 1024 * 1024  # below this, a failed save is most likely the full disk


def disk_note(root: Path) -> str:
    """The likely cause of a failed save when the dataset's disk is (nearly) full: LeRobot's image writer
    threads fail on ENOSPC without a word, and the save then reports a missing PNG instead."""
    import shutil

    where = next((p for p in (root, *root.parents) if p.exists()), None)
    if where is None:
        return ""
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return ""
    if free >= LOW_DISK_BYTES:
        return ""
    return (f". The disk holding {root} has only {free / 1e6:.0f} MB free, which is most likely why: free some "
            "space, or set [recording] root to another disk (episodes saved before are intact)")


class FrameHistory:
    """The last seconds of each camera's frames from the ring, searchable by capture time."""

    def __init__(self, ring: Any, fps: dict[str, int]) -> None:
        self.ring = ring
        self._lock = threading.Lock()
        self._frames: dict[str, deque[tuple[float, npt.NDArray[np.uint8]]]] = {
            cam: deque(maxlen=max(4, int(_HISTORY_S * f))) for cam, f in fps.items()
        }
        self._seen: dict[str, int] = dict.fromkeys(fps, 0)
        self.cameras = tuple(fps)
        self._wanted_hz = float(max(fps.values(), default=30) or 30)
        self.stop = threading.Event()

    def poll_once(self) -> None:
        from lepetpal_tui.frame_ring import RECORDER

        # Every camera's frames at its own rate: the engine makes as many as its readers want (frame_ring.py).
        self.ring.want(RECORDER, self._wanted_hz)
        for cam in self._frames:
            if self.ring.latest_seq(cam) <= self._seen[cam]:
                continue
            frame = self.ring.latest(cam, newer_than=self._seen[cam])
            if frame is None:
                continue
            self._seen[cam] = frame.seq
            with self._lock:
                self._frames[cam].append((frame.t, frame.image))

    def wait_first(self, timeout_s: float) -> bool:
        """Poll until every camera has a frame (the engine draws the first ones only once asked), at most
        `timeout_s`; whether they all came. Ticks that queued meanwhile then get the earliest frame, not a
        black one (measured before: the first 8 ticks of a headless recording had no image)."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                self.poll_once()
            except Exception:  # a ring gone bad: the run loop's polls go on (and say nothing either)
                return False
            with self._lock:
                if all(self._frames[cam] for cam in self._frames):
                    return True
            if time.monotonic() > end:
                return False
            time.sleep(_POLL_S)

    def run(self) -> None:
        while not self.stop.wait(_POLL_S):
            with contextlib.suppress(Exception):
                self.poll_once()

    def at(self, cam: str, t: float) -> npt.NDArray[np.uint8] | None:
        """The newest frame captured at or before `t` (else the oldest kept); None before any frame."""
        with self._lock:
            frames = list(self._frames[cam])
        if not frames:
            return None
        i = bisect.bisect_right([ft for ft, _ in frames], t)
        return frames[max(0, i - 1)][1]


@dataclass
class _Episode:
    index: int
    task: str
    first_t: float
    last_t: float = 0.0
    frames: int = 0
    clamps: int = 0
    starved: int = 0
    no_image: int = 0
    last_action: npt.NDArray[np.float32] | None = None
    tasks: set[str] = field(default_factory=set)


class Recorder:
    """The main thread's LeRobot work (see the module docstring)."""

    def __init__(self, settings: Settings, status: Any, root: Path, session_log: str) -> None:
        from lepetpal_tui.record.features import dataset_features

        self.settings = settings
        self.status_q = status
        self.root = root
        self.session_log = session_log
        self.features = dataset_features(settings)
        self.fps = round(settings.control.rate_hz)
        self.ds: Any = None
        self.episode: _Episode | None = None
        self.saved = 0
        self.last_episode: int | None = None
        self.last_outcome = ""
        self.dropped = 0
        self.error = ""
        self.saving = False

    # ------------------------------------------------------------------------------------ reporting

    def report(self) -> None:
        with contextlib.suppress(Exception):
            self.status_q.put_nowait(("status", {
                "episodes": self.saved, "frames": 0 if self.episode is None else self.episode.frames,
                "in_episode": self.episode is not None, "dropped": self.dropped,
                "last_episode": self.last_episode, "last_outcome": self.last_outcome,
                "saving": self.saving, "root": str(self.root), "error": self.error,
            }))

    def event(self, level: str, text: str) -> None:
        with contextlib.suppress(Exception):
            self.status_q.put_nowait(("event", level, text))

    # --------------------------------------------------------------------------------------- frames

    def add(self, msg: tuple[Any, ...], images: dict[str, npt.NDArray[np.uint8] | None]) -> None:
        from lepetpal_tui.record.dataset import open_for_episode
        from lepetpal_tui.record.features import CLAMPED, RAW_ACTION, SPEED, STARVED, image_key

        _, t, _run, task, measured, action, raw, clamped, starved, speed = msg
        if self.error:
            return
        if self.episode is None:
            try:
                if self.ds is None:
                    self.ds = open_for_episode(self.root, self.settings.recording, self.features, self.fps)
            except Exception as exc:
                self.error = f"{exc}"
                self.event("error", f"Recording stopped: {exc}")
                self.report()
                return
            self.episode = _Episode(index=int(self.ds.meta.total_episodes), task=task, first_t=t)
        ep = self.episode
        state = np.asarray(measured, dtype=np.float32)
        if action is not None:
            act = np.asarray(action, dtype=np.float32)
        else:  # holding without a goal (waiting for the first chunk): the target is where it is
            act = ep.last_action if ep.last_action is not None else state
        if not np.all(np.isfinite(state)):  # a failed joint read: keep the frame count, hold the last value
            state = act
        ep.last_action = act
        frame: dict[str, Any] = {
            "observation.state": state,
            "action": act,
            RAW_ACTION: np.asarray(raw if raw is not None else act, dtype=np.float32),
            CLAMPED: np.asarray(clamped, dtype=np.float32),
            STARVED: np.asarray([1.0 if starved else 0.0], dtype=np.float32),
            SPEED: np.asarray([speed], dtype=np.float32),
            "task": task,
        }
        for cam, cs in self.settings.cameras.items():
            img = images.get(cam)
            if img is None:
                ep.no_image += 1
                img = np.zeros((cs.height, cs.width, 3), dtype=np.uint8)
            frame[image_key(cam)] = img
        self.ds.add_frame(frame)
        ep.frames += 1
        ep.last_t = t
        ep.clamps += int(sum(bool(c) for c in clamped))
        ep.starved += int(bool(starved))
        ep.tasks.add(task)
        if ep.frames % 15 == 1:
            self.report()

    def end(self, save: bool = True) -> None:
        """Close the open episode: encode, save and finalize it (or discard it)."""
        from lepetpal_tui.record.marks import read_marks, write_marks

        ep, self.episode = self.episode, None
        if ep is None or self.ds is None:
            return
        if not save:
            with contextlib.suppress(Exception):
                self.ds.clear_episode_buffer()
            self.event("info", f"Recording: episode {ep.index} discarded ({ep.frames} frames).")
            return
        self.saving = True
        self.report()
        t0 = time.monotonic()
        try:
            self.ds.save_episode()
            self.ds.finalize()
        except Exception as exc:
            self.error = f"saving episode {ep.index} failed: {exc}{disk_note(self.root)}"
            self.event("error", f"Recording stopped: {self.error}")
            self.saving = False
            self.ds = None
            self.report()
            return
        self.ds = None  # the next episode resumes: a new data file, this one stays whole
        self.saving = False
        self.saved += 1
        self.last_episode = ep.index
        self.last_outcome = ""
        marks = read_marks(self.root)
        marks[ep.index] = {
            "episode_index": ep.index, "outcome": None, "task": ep.task, "tasks": sorted(ep.tasks),
            "frames": ep.frames, "duration_s": round(ep.last_t - ep.first_t + 1.0 / self.fps, 3),
            "clamped_joint_ticks": ep.clamps, "starved_ticks": ep.starved, "frames_without_image": ep.no_image,
            "dropped_before": self.dropped, "session_log": self.session_log,
        }
        write_marks(self.root, marks)
        self.event("info", f"Recording: episode {ep.index} saved ({ep.frames} frames, "
                           f"{time.monotonic() - t0:.1f} s to encode). Mark it with s / f.")
        self.report()

    def mark(self, outcome: str) -> None:
        from lepetpal_tui.record.marks import set_outcome

        if self.last_episode is None:
            self.event("warning", "No recorded episode to mark yet.")
            return
        set_outcome(self.root, self.last_episode, outcome)
        self.last_outcome = outcome
        self.event("info", f"Recording: episode {self.last_episode} marked {outcome}.")
        self.report()


def lower_priority() -> None:
    """This thread (and what it starts) at nice +15, absolute, and idle I/O priority where Linux allows.

    Absolute, not `os.nice(15)`: a process inherits the nice of the thread that started it, and the
    engine's command thread runs at -10, so a relative +15 ended at +5 (measured: late ticks and a bus
    timeout while the recorder started). Idle I/O class: staging frames as PNG writes ~10 MB/s."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RECORDER_NICE)
    # SCHED_IDLE (Linux; no permission needed): the scheduler runs the recorder only on a core nobody else
    # wants and preempts it at once when the actuator, the bus or the simulator wakes. Nice +15 alone
    # still let PNG staging and encoding delay ticks (p99 14 ms recording vs 3.6 ms off, AVX2 EPYC).
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    nr = {"x86_64": 251, "aarch64": 31}.get(os.uname().machine)
    if nr is not None:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).syscall(nr, 1, 0, 3 << 13)  # ioprio_set(WHO_PROCESS, self, IDLE)


def _attach_ring(name: str, deadline_s: float = 30.0) -> Any:
    from lepetpal_tui.frame_ring import FrameRing

    end = time.monotonic() + deadline_s
    while True:
        try:
            return FrameRing.attach(name)
        except FileNotFoundError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def recorder_main(settings: Settings, root: str, session_log: str,
                  inbox: Any, outbox: Any, parent_pid: int) -> None:
    """Entry point of the recorder process (multiprocessing, spawn). The frame ring's name comes as a
    ("ring", name) message once the engine's cameras are open."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when recording stops
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    lower_priority()
    ring: Any = None
    history: FrameHistory | None = None
    backlog: queue_mod.Queue[tuple[Any, ...]] = queue_mod.Queue()
    frame_bytes = max(1, sum(c.width * c.height * 3 for c in settings.cameras.values()))
    budget = max(30, _BACKLOG_BYTES // frame_bytes)
    dropped = [0]

    def intake() -> None:
        nonlocal ring, history
        while True:
            try:
                msg = inbox.get(timeout=0.5)
            except queue_mod.Empty:
                if os.getppid() != parent_pid:  # the engine died (kill -9): close as at quit
                    backlog.put(("quit", settings.recording.on_quit))
                    return
                continue
            except (EOFError, OSError):
                backlog.put(("quit", settings.recording.on_quit))
                return
            if msg[0] == "ring":
                if history is None:
                    try:
                        ring = _attach_ring(str(msg[1]), deadline_s=5.0)
                    except FileNotFoundError as exc:
                        backlog.put(("event", "warning", f"Recording without camera frames: {exc}"))
                        continue
                    history = FrameHistory(ring, {n: c.fps for n, c in settings.cameras.items() if n in ring.cameras})
                    history.wait_first(_FIRST_FRAME_S)  # before any tick takes a frame from it
                    threading.Thread(target=history.run, name="recorder-frames", daemon=True).start()
                continue
            if msg[0] == "ticks":
                for tick in msg[1]:
                    if backlog.qsize() >= budget:
                        dropped[0] += 1
                        continue
                    h = history
                    images = {cam: h.at(cam, tick[1]) if h is not None and cam in h.cameras else None
                              for cam in settings.cameras}
                    backlog.put(("frame", tick, images))
            else:
                backlog.put(msg)
                if msg[0] == "quit":
                    return

    threading.Thread(target=intake, name="recorder-intake", daemon=True).start()
    rec = Recorder(settings, outbox, Path(root), session_log)
    rec.report()
    while True:
        item = backlog.get()
        rec.dropped = dropped[0]
        kind = item[0]
        if kind == "frame":
            rec.add(item[1], item[2])
        elif kind in ("end", "discard"):
            rec.end(save=kind == "end")
        elif kind == "mark":
            rec.mark(str(item[1]))
        elif kind == "event":
            rec.event(str(item[1]), str(item[2]))
        elif kind == "quit":
            rec.end(save=item[1] != "discard")
            rec.report()
            break
    if history is not None:
        history.stop.set()
    if ring is not None:
        with contextlib.suppress(Exception):
            ring.close()
