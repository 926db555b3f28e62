"""What crosses processes: commands (UI -> engine), telemetry and events (engine -> UI), the engine's
snapshot, and the observation / chunk types the policy process exchanges with the engine.

No torch, no lerobot, no textual here, and nothing of the app but the joint leaf: the UI imports this
module and must stay light. Everything is picklable. Joint vectors are in `JOINT_NAMES` order and in
robot units (see `lepetpal_tui.joints`).

Commands are a union of frozen dataclasses, so a handler is chosen with `match` (and `assert_never`
makes a forgotten one a type error). Events carry an `EventKind` beside their human text: code decides on
the kind, people read the text; nothing parses the text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lepetpal_tui.joints import JOINT_NAMES

if TYPE_CHECKING:  # numpy only in annotations: the UI imports this module before its first screen
    import numpy as np
    import numpy.typing as npt

    from lepetpal_tui.joints import FloatArray

__all__ = [
    "JOINT_NAMES",
    "OUTCOMES",
    "RECORDER_CLOSE_S",
    "ActionChunk",
    "CameraStatus",
    "ChunkReply",
    "ChunkSample",
    "CloseRequest",
    "Command",
    "EStop",
    "EngineEvent",
    "EngineSnapshot",
    "EngineState",
    "EventKind",
    "Heartbeat",
    "HoldCause",
    "InferRequest",
    "InferenceTiming",
    "Level",
    "MarkEpisode",
    "ModelPhase",
    "ModelStatus",
    "Observation",
    "Outcome",
    "PolicyFailed",
    "PolicyLoaded",
    "PortInfo",
    "PreflightCheck",
    "Quit",
    "Rearm",
    "RecordingStatus",
    "RemoteServerInfo",
    "ResetRequest",
    "RunMacro",
    "ServoHealth",
    "SetDryRun",
    "SetRecording",
    "SetTask",
    "Start",
    "Stop",
    "TelemetryBatch",
    "TickSample",
    "ToPolicy",
    "UiLost",
    "command_name",
]


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
    network_s: float = 0.0  # a policy server: uploading the observation (0 for a local policy)

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.model_s + self.postprocess_s + self.network_s


@dataclass
class ActionChunk:
    """A chunk of future actions, one row per control tick, in robot units and JOINT_NAMES order."""

    actions: FloatArray  # shape (n, 6)
    timing: InferenceTiming = field(default_factory=InferenceTiming)
    task: str = ""
    observed_at: float = 0.0  # Observation.timestamp the chunk was computed from
    source: Literal["local", "remote"] = "local"  # "remote": from a policy server ([model] server)


# The policy pipe (engine <-> policy process): typed messages, matched on their class.


@dataclass(frozen=True)
class InferRequest:
    obs: Observation


@dataclass(frozen=True)
class ResetRequest:
    """A new run starts: drop the policy's internal queue and state."""


@dataclass(frozen=True)
class CloseRequest:
    """Stop serving and exit."""


@dataclass(frozen=True)
class PolicyLoaded:
    chunk_length: int
    name: str


@dataclass(frozen=True)
class ChunkReply:
    chunk: ActionChunk


@dataclass(frozen=True)
class PolicyFailed:
    """Loading or one inference failed; the message says why, `fix` what to do (when known)."""

    message: str
    fix: str = ""


ToPolicy = InferRequest | ResetRequest | CloseRequest
# ModelStatus (below) also travels this way while the policy loads.


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
class RemoteServerInfo:
    """The policy server a remote policy talks to ([model] server), for the Model pane."""

    address: str  # "host:port" as configured
    device: str = ""  # what we asked for; "auto" = the server's choice
    network_s: float = 0.0  # last chunk: uploading the observation (network + the server's unpickling)
    server_s: float = 0.0  # last chunk: GetActions (the server's compute + the small reply)
    last_contact: float = 0.0  # time.time() of the last chunk received; 0 = none yet
    bytes_sent: int = 0  # last observation's size on the wire


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
    # The checkpoint's image input (height, width) after its resize-with-pad; () when unknown.
    image_size: tuple[int, ...] = ()
    remote: RemoteServerInfo | None = None  # set when the policy runs on a policy server

    @property
    def usable(self) -> bool:
        """The policy is loaded and a start is accepted (on a fallback path too)."""
        return self.phase in ("ready", "fallback")

    @property
    def loading(self) -> bool:
        """Still on the way to a usable policy: the one "is the model loading" predicate."""
        return self.phase in ("resolving", "downloading", "loading", "warming_up")


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


class HoldCause(enum.StrEnum):
    """Why the engine holds (the machine-readable half of `hold_reason`)."""

    NONE = ""
    STOPPED = "stopped"
    ESTOP = "estop"  # latched, torque on: the servos hold the last goal
    ESTOP_TORQUE_OFF = "estop_torque_off"  # latched, the arm is limp
    FAULT = "fault"  # bus, health, camera, policy or internal fault
    LOAD_FAILED = "load_failed"
    UI_LOST = "ui_lost"
    QUEUED_START = "queued_start"  # not a hold: a start waits for the policy


@dataclass(frozen=True, kw_only=True)
class _CommandBase:
    sent_at: float = 0.0  # time.monotonic() in the sender, for e-stop latency figures


@dataclass(frozen=True, kw_only=True)
class Start(_CommandBase):
    """Run the policy on `task` (empty: the current task). `confirm_stand_in`: the operator confirmed
    running on a camera's synthetic fallback."""

    task: str = ""
    confirm_stand_in: bool = False


@dataclass(frozen=True, kw_only=True)
class Stop(_CommandBase):
    """Stop the policy or macro; the arm holds its measured pose."""


@dataclass(frozen=True, kw_only=True)
class SetTask(_CommandBase):
    task: str


@dataclass(frozen=True, kw_only=True)
class EStop(_CommandBase):
    """Latch a hold at once. torque_off: cut torque instead (the arm goes limp)."""

    torque_off: bool = False


@dataclass(frozen=True, kw_only=True)
class Rearm(_CommandBase):
    """Leave e-stop or a fault hold (torque back on at the measured pose)."""


@dataclass(frozen=True, kw_only=True)
class SetDryRun(_CommandBase):
    on: bool


@dataclass(frozen=True, kw_only=True)
class RunMacro(_CommandBase):
    name: str


@dataclass(frozen=True, kw_only=True)
class Quit(_CommandBase):
    """Hold, optionally run the home macro, disconnect."""

    go_home: bool = False


@dataclass(frozen=True, kw_only=True)
class Heartbeat(_CommandBase):
    """Sent a few times a second from the UI's event loop: the dead-man signal."""


@dataclass(frozen=True, kw_only=True)
class UiLost(_CommandBase):
    """The UI's last word: why it is going away (its terminal hung up, it crashed)."""

    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class SetRecording(_CommandBase):
    """Recording on/off: each start of the policy then records a LeRobot dataset episode."""

    on: bool


Outcome = Literal["success", "failure", "timed out"]
OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "timed out")


@dataclass(frozen=True, kw_only=True)
class MarkEpisode(_CommandBase):
    """Mark the last recorded episode (kept in the dataset and in the session log)."""

    outcome: Outcome


Command = (Start | Stop | SetTask | EStop | Rearm | SetDryRun | RunMacro | Quit | Heartbeat | UiLost
           | SetRecording | MarkEpisode)

_COMMAND_NAMES: dict[type, str] = {
    Start: "start", Stop: "stop", SetTask: "set_task", Rearm: "rearm", SetDryRun: "set_dry_run",
    RunMacro: "macro", Quit: "quit", Heartbeat: "heartbeat", UiLost: "ui_lost",
    SetRecording: "record", MarkEpisode: "mark_episode",
}


def command_name(cmd: Command) -> str:
    """The command's name in the session log and in messages ("estop_torque_off" for a torque-off
    e-stop, as the log has always said)."""
    if isinstance(cmd, EStop):
        return "estop_torque_off" if cmd.torque_off else "estop"
    return _COMMAND_NAMES[type(cmd)]


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
    source: Literal["local", "remote"] = "local"  # where the chunk was computed


@dataclass(frozen=True)
class CapturedFrame:
    """A camera frame and when it was captured: inference refuses frames older than
    `safety.camera_timeout_s`, so a camera that stopped can never feed the policy its last picture."""

    image: npt.NDArray[np.uint8]  # H x W x 3 uint8 RGB
    t: float  # time.monotonic() at capture


class EventKind(enum.StrEnum):
    """What an event is about, for code that acts on events (the text is for people)."""

    INFO = "info"
    STATE = "state"  # started, stopped, re-armed, dry-run, task, macro
    REFUSED = "refused"  # a command that was not applied, and why
    ESTOP = "estop"
    ARM_CONNECT_FAILED = "arm_connect_failed"
    POLICY_LOAD_FAILED = "policy_load_failed"
    POLICY_READY = "policy_ready"
    BUS_FAULT = "bus_fault"
    HEALTH_FAULT = "health_fault"
    CAMERA = "camera"
    CAMERA_FAULT = "camera_fault"
    INFERENCE_FAULT = "inference_fault"
    POLICY_OUTPUT_FAULT = "policy_output_fault"  # NaN, wrong shape, a jump the filter refused
    SLOW_INFERENCE = "slow_inference"
    UI_LOST = "ui_lost"
    UI_SILENT = "ui_silent"
    RECORDING = "recording"
    INTERNAL = "internal"
    ENGINE_GONE = "engine_gone"
    DISCONNECTED = "disconnected"

    @property
    def fatal_at_start(self) -> bool:
        """A headless run cannot go on after this one: nothing will ever become ready."""
        return self in (EventKind.ARM_CONNECT_FAILED, EventKind.POLICY_LOAD_FAILED, EventKind.ENGINE_GONE)


Level = Literal["info", "warning", "error"]


@dataclass(frozen=True)
class EngineEvent:
    t: float
    level: Level
    message: str
    fix: str = ""
    kind: EventKind = EventKind.INFO


@dataclass(frozen=True)
class CameraStatus:
    """What a camera delivers right now, for the Camera pane (frames themselves go through the frame ring)."""

    name: str
    kind: str  # "opencv", "video" or "synthetic"
    failed_reason: str = ""  # why a real camera gives no frames ("" when it does)
    width: int = 0
    height: int = 0


RECORDER_CLOSE_S = 120.0  # how long a quit waits for the last episode's save (both sides of the pipe)


@dataclass(frozen=True)
class RecordingStatus:
    """What the recorder (lepetpal_tui/record) reports for the screen: on/off, episodes, frames."""

    on: bool = False
    episodes: int = 0  # saved into the dataset by this session (a resumed dataset holds more)
    frames: int = 0  # frames of the episode being recorded (0 when none is open)
    in_episode: bool = False
    dropped: int = 0  # tick records dropped because the recorder's queue was full
    last_episode: int | None = None  # index of the last saved episode (what s / f marks)
    last_outcome: str = ""  # "success", "failure", "timed out" or ""
    saving: bool = False  # an episode is being encoded and written
    root: str = ""
    error: str = ""  # why recording stopped, with what to do

    @property
    def save_pending(self) -> bool:
        """An episode is open or being saved: a quit must wait for the recorder (RECORDER_CLOSE_S)."""
        return self.on and (self.in_episode or self.saving)


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine's counters and state at one moment (telemetry batches carry the same fields)."""

    state: EngineState
    task: str = ""
    dry_run: bool = False
    starved_ticks: int = 0
    clamp_count: int = 0
    estop_count: int = 0
    tick_count: int = 0
    hold_reason: str = ""
    hold_cause: HoldCause = HoldCause.NONE
    # The next goals the tick will send (after the safety filter; would-be goals in dry-run), evenly
    # spaced over the next ~1.5 s; () when nothing is planned (holding).
    plan_ahead: tuple[tuple[float, ...], ...] = ()
    frame_ring: str = ""  # shared-memory name of the engine's frame ring ("" until cameras are open)
    cameras: tuple[CameraStatus, ...] = ()
    recording: RecordingStatus | None = None  # None when this engine has no recorder


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
    hold_cause: HoldCause = HoldCause.NONE
    plan_ahead: tuple[tuple[float, ...], ...] = ()  # see EngineSnapshot
    frame_ring: str = ""
    cameras: tuple[CameraStatus, ...] = ()
    recording: RecordingStatus | None = None

    @property
    def latest_tick(self) -> TickSample | None:
        return self.ticks[-1] if self.ticks else None

