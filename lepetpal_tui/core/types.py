"""Plain data shared by the arm, policy, engine and UI. No torch, no lerobot, no textual here.

Everything in this module is picklable: it crosses the pipe between the engine process and the UI.
Joint vectors are always in `JOINT_NAMES` order and in robot units (degrees for the five body joints,
or -100..100 when `arm.units = "normalized"`; 0..100 for the gripper).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from lepetpal_tui.config import JOINT_NAMES

__all__ = [
    "JOINT_NAMES",
    "ActionChunk",
    "ChunkSample",
    "Command",
    "EngineEvent",
    "EngineState",
    "InferenceTiming",
    "ModelPhase",
    "ModelStatus",
    "Observation",
    "PortInfo",
    "PreflightCheck",
    "RecordingStatus",
    "ServoHealth",
    "TelemetryBatch",
    "TickSample",
]

FloatArray = npt.NDArray[np.float64]


# ------------------------------------------------------------------------------------------------ arm


@dataclass(frozen=True)
class ServoHealth:
    """One servo's health reading."""

    joint: str
    temperature_c: float
    load_pct: float  # |Present_Load| as percent of rated torque
    voltage_v: float
    error_bits: int = 0  # status packet error byte (overheat 0x04, overload 0x20, voltage 0x01)


@dataclass(frozen=True)
class PortInfo:
    """A serial port and what answers on it (`lepetpal ports`, the Port pane)."""

    device: str
    description: str = ""
    vid_pid: str = ""  # "1a86:55d3"
    serial_number: str = ""
    by_id: str = ""  # /dev/serial/by-id/... when present
    is_sim: bool = False
    probed: bool = False  # False: not probed (busy, permission, ...)
    is_so101: bool = False
    motor_ids: tuple[int, ...] = ()
    model_numbers: tuple[int, ...] = ()
    voltage_v: float | None = None
    note: str = ""  # why it is not an SO-101, or the probe error and what to do


# --------------------------------------------------------------------------------------------- policy


@dataclass
class Observation:
    """What the policy sees: measured joints, latest camera frames (H x W x 3 uint8 RGB) and the task."""

    joints: FloatArray  # shape (6,)
    images: dict[str, npt.NDArray[np.uint8]]  # keyed by *our* camera names (before the rename map)
    task: str
    timestamp: float = 0.0  # time.monotonic() when the joints were read


@dataclass(frozen=True)
class InferenceTiming:
    preprocess_s: float = 0.0
    model_s: float = 0.0
    postprocess_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.model_s + self.postprocess_s


@dataclass
class ActionChunk:
    """A chunk of future actions, one row per control tick, in robot units and JOINT_NAMES order."""

    actions: FloatArray  # shape (n, 6)
    timing: InferenceTiming = field(default_factory=InferenceTiming)
    task: str = ""
    observed_at: float = 0.0  # Observation.timestamp the chunk was computed from


ModelPhase = Literal[
    "idle", "resolving", "downloading", "loading", "warming_up", "ready", "failed", "fallback"
]


@dataclass(frozen=True)
class PreflightCheck:
    name: str  # "cameras", "state size", "statistics", "units", "device"
    ok: bool
    detail: str  # names both sides on a mismatch
    fix: str = ""  # the setting to change


@dataclass(frozen=True)
class ModelStatus:
    """Progress and result of loading a policy; streamed to the Model pane."""

    phase: ModelPhase
    source: str = ""  # repo id or local path, or "scripted"
    revision: str = ""
    message: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    current_file: str = ""
    device: str = ""
    dtype: str = ""
    parameters: int = 0
    warmup_s: float | None = None
    preflight: tuple[PreflightCheck, ...] = ()
    error: str = ""  # reason when failed / fallback
    fix: str = ""  # what to do about it


# --------------------------------------------------------------------------------------------- engine


class EngineState(enum.StrEnum):
    DISCONNECTED = "DISCONNECTED"
    CONNECTING = "CONNECTING"
    LOADING = "LOADING"  # connected, holding, the policy is still loading (a start waits for it)
    READY = "READY"  # connected, holding, policy loaded: a start is accepted
    RUNNING = "RUNNING"  # policy actions are written to the arm
    DRY_RUN = "DRY-RUN"  # policy runs, nothing is written
    MACRO = "MACRO"
    ESTOP = "E-STOP"  # latched hold; needs re-arm
    ERROR = "ERROR"  # holding because of a fault; reason in the last event


@dataclass(frozen=True)
class Command:
    """UI -> engine. `kind` is one of: start, stop, set_task, estop, estop_torque_off, rearm,
    set_dry_run, macro, quit, heartbeat, ui_lost, record (`flag`: recording on/off; or `name` "success",
    "failure", "timed out": mark the last recorded episode). `task` for start/set_task, `flag` for set_dry_run (and,
    on start, "run on a camera's synthetic fallback": the operator confirmed it), `name` for macro,
    `go_home` for quit, `reason` for ui_lost (the UI's last word: why it is going away). `heartbeat` is
    sent a few times a second from the UI's event loop."""

    kind: str
    task: str = ""
    flag: bool = False
    name: str = ""
    go_home: bool = False
    sent_at: float = 0.0  # time.monotonic() in the sender, for e-stop latency figures
    reason: str = ""


@dataclass(frozen=True)
class TickSample:
    t: float  # monotonic time of the tick start
    period_s: float  # since the previous tick start
    work_s: float  # read + filter + write time
    measured: tuple[float, ...]  # 6 joints
    goal: tuple[float, ...] | None  # sent (or would-be in dry-run); None when holding without a goal
    written: bool  # False in dry-run, hold or e-stop
    clamped: tuple[bool, ...]  # per joint: the safety filter changed this joint's goal
    starved: bool  # RUNNING but no action was available
    queue_depth: int
    speed: float = 1.0  # playback speed factor: plan steps per tick (< 1 while inference is slow)
    raw_action: tuple[float, ...] | None = None  # the plan's action before the safety filter (recording)
    run: int = -1  # which policy start this tick belongs to (RUNNING / DRY-RUN); -1 otherwise


@dataclass(frozen=True)
class ChunkSample:
    t: float
    timing: InferenceTiming
    length: int
    queue_depth_at_merge: int
    task: str


@dataclass(frozen=True)
class CapturedFrame:
    """A camera frame and when it was captured: inference refuses frames older than
    `safety.camera_timeout_s`, so a camera that stopped can never feed the policy its last picture."""

    image: npt.NDArray[np.uint8]  # H x W x 3 uint8 RGB
    t: float  # time.monotonic() at capture


@dataclass(frozen=True)
class EngineEvent:
    t: float
    level: Literal["info", "warning", "error"]
    message: str
    fix: str = ""


@dataclass(frozen=True)
class RecordingStatus:
    """What the recorder (lepetpal_tui/record) reports for the screen: on/off, episodes, frames."""

    on: bool = False
    episodes: int = 0  # saved in the dataset (this session and before, when resumed)
    frames: int = 0  # frames of the episode being recorded (0 when none is open)
    in_episode: bool = False
    dropped: int = 0  # tick records dropped because the recorder's queue was full
    last_episode: int | None = None  # index of the last saved episode (what s / f marks)
    last_outcome: str = ""  # "success", "failure", "timed out" or ""
    saving: bool = False  # an episode is being encoded and written
    root: str = ""
    error: str = ""  # why recording stopped, with what to do


@dataclass
class TelemetryBatch:
    """Coalesced telemetry, sent at a bounded rate (about 20 Hz).

    `ticks` holds every tick since the previous batch (the UI keeps a bounded history); `latest_tick`
    is the newest. Counters are totals since the session started.
    """

    state: EngineState
    task: str = ""
    dry_run: bool = False
    ticks: list[TickSample] = field(default_factory=list)
    chunks: list[ChunkSample] = field(default_factory=list)
    events: list[EngineEvent] = field(default_factory=list)
    health: tuple[ServoHealth, ...] = ()
    model: ModelStatus | None = None  # set when it changed
    starved_ticks: int = 0
    clamp_count: int = 0
    estop_count: int = 0
    tick_count: int = 0
    hold_reason: str = ""
    recording: RecordingStatus | None = None  # None when this engine has no recorder

    @property
    def latest_tick(self) -> TickSample | None:
        return self.ticks[-1] if self.ticks else None
