"""The settings' schema: typed, frozen sections with their defaults, ranges and documentation.

Every field's `metadata` carries its doc and range (`_meta`), which validation and `lepetpal config`
use. `replace_setting` / `replace_sections` are the one way to change settings in code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_CONFIG_NAME = "lepetpal.toml"
CONFIG_ENV = "LEPETPAL_CONFIG"


class ConfigError(Exception):
    """A settings problem the user must fix; the message says what and how."""


def _meta(doc: str, *, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"doc": doc, "lo": lo, "hi": hi}


# ---------------------------------------------------------------------------------------------- schema


def default_limits() -> dict[str, tuple[float, float]]:
    # Degrees for the five body joints, 0..100 for the gripper (LeRobot's SO-101 normalisation).
    return {
        "shoulder_pan": (-110.0, 110.0),
        "shoulder_lift": (-100.0, 100.0),
        "elbow_flex": (-100.0, 100.0),
        "wrist_flex": (-100.0, 100.0),
        "wrist_roll": (-160.0, 160.0),
        "gripper": (0.0, 100.0),
    }


@dataclass(frozen=True)
class ArmSettings:
    port: str = field(default="sim", metadata=_meta('serial port path, "auto" (first SO-101 found) or "sim"'))
    robot_id: str = field(
        default="lepetpal_so101", metadata=_meta("calibration file name (LeRobot robot id)")
    )
    calibration_dir: str = field(
        default="", metadata=_meta('calibration folder; "" = LeRobot\'s default under ~/.cache/huggingface')
    )
    units: Literal["degrees", "normalized"] = field(
        default="degrees", metadata=_meta('"degrees" or "normalized" (-100..100) for the five body joints')
    )
    max_step_per_tick: float = field(
        default=3.0, metadata=_meta("largest change of a goal per control tick (joint units)", lo=0.01, hi=90)
    )
    read_retries: int = field(default=2, metadata=_meta("bus read retries before a tick fails", lo=0, hi=10))
    limits: dict[str, tuple[float, float]] = field(
        default_factory=default_limits, metadata=_meta("per-joint [min, max] in joint units")
    )


@dataclass(frozen=True)
class CameraSettings:
    source: int | str = field(
        default="synthetic", metadata=_meta('device index, video file path, "synthetic" (the scene: the arm drawn from its joints) or "pattern"')
    )
    width: int = field(default=640, metadata=_meta("frame width in pixels", lo=16, hi=4096))
    height: int = field(default=480, metadata=_meta("frame height in pixels", lo=16, hi=4096))
    fps: int = field(default=30, metadata=_meta("frames per second", lo=1, hi=240))


def _default_cameras() -> dict[str, CameraSettings]:
    return {"front": CameraSettings()}


@dataclass(frozen=True)
class ModelSettings:
    mode: Literal["smolvla", "scripted"] = field(
        default="smolvla", metadata=_meta('"smolvla" (the policy) or "scripted" (a fixed demo motion)')
    )
    path: str = field(
        default="",
        metadata=_meta('hub repo id or local checkpoint folder; "" = the built-in demo checkpoint'),
    )
    revision: str = field(default="main", metadata=_meta("hub branch, tag or commit"))
    device: Literal["auto", "cpu", "cuda", "mps"] = field(
        default="auto", metadata=_meta('"auto" (cuda, then mps, then cpu), "cpu", "cuda" or "mps"')
    )
    dtype: Literal["auto", "fp32", "bf16", "int8"] = field(
        default="auto",
        metadata=_meta('"auto" (int8 on CPU, bf16 on CUDA; checked against fp32 at load), "fp32", "bf16" or "int8"'),
    )
    # 0: the checkpoint's own num_steps (what it was trained with); a number overrides it.
    flow_steps: int = field(default=0, metadata=_meta("flow-matching denoising steps (0 = the checkpoint's own)",
                                                      lo=0, hi=100))
    actions_per_chunk: int = field(default=50, metadata=_meta("actions used from each chunk", lo=1, hi=1000))
    fallback_to_scripted: bool = field(
        default=True, metadata=_meta("run the scripted policy when SmolVLA cannot load (reason shown)")
    )
    hf_transfer: bool = field(default=False, metadata=_meta("use hf_transfer for faster downloads"))
    cache_dir: str = field(default="", metadata=_meta('download cache; "" = the Hugging Face default'))
    camera_map: dict[str, str] = field(
        default_factory=dict, metadata=_meta("our camera name -> checkpoint camera name")
    )
    # A LeRobot policy server (`lepetpal serve` on a GPU machine, reached through an SSH tunnel): chunks are
    # computed there; the safety filter, e-stop and session log stay here.
    server: str = field(
        default="", metadata=_meta('"host:port" of a LeRobot policy server; "" = run the policy here')
    )


@dataclass(frozen=True)
class ControlSettings:
    rate_hz: float = field(default=30.0, metadata=_meta("control ticks per second", lo=1, hi=200))
    dry_run: bool = field(default=False, metadata=_meta("start in dry-run (no goal writes)"))
    chunk_threshold: float = field(
        default=0.7,
        metadata=_meta("start the next inference when this fraction of a chunk is left", lo=0.0, hi=1.0),
    )
    blend_steps: int = field(
        default=8, metadata=_meta("ticks over which a new chunk is blended into the old", lo=0, hi=100)
    )
    when_inference_is_slow: Literal["slow_down", "hold"] = field(
        default="slow_down",
        metadata=_meta('inference slower than the plan: "slow_down" (play the plan slower) or "hold" (wait)'),
    )
    min_speed: float = field(
        default=0.2,
        metadata=_meta("slowest playback speed factor; below it the arm holds between chunks", lo=0.05, hi=1.0),
    )
    realtime_wakeup: bool = field(
        default=True,
        metadata=_meta("run the control thread at real-time priority (its sleep and its bus work; "
                       "needs CAP_SYS_NICE or an rtprio limit)"),
    )
    quit_go_home: bool = field(default=False, metadata=_meta("run the home macro on quit"))
    quit_torque_off: bool = field(default=True, metadata=_meta("turn torque off when disconnecting on quit"))


@dataclass(frozen=True)
class SafetySettings:
    max_temperature_c: float = field(
        default=65.0, metadata=_meta("hold above this servo temperature", lo=20, hi=90)
    )
    max_load_pct: float = field(default=90.0, metadata=_meta("hold above this servo load (%)", lo=1, hi=100))
    min_voltage_v: float = field(default=4.5, metadata=_meta("hold below this supply voltage", lo=0, hi=20))
    max_voltage_v: float = field(default=13.5, metadata=_meta("hold above this supply voltage", lo=0, hi=20))
    ui_lost_disconnect_s: float = field(
        default=5.0, metadata=_meta("after the UI vanishes: hold this long, then disconnect", lo=0, hi=3600)
    )
    ui_lost_torque_off: bool = field(
        default=False, metadata=_meta("torque off when disconnecting after UI loss")
    )
    bus_retries: int = field(
        default=3,
        metadata=_meta("consecutive failed joint reads, and separately goal writes, before holding", lo=0, hi=100),
    )
    health_read_retries: int = field(
        default=2,
        metadata=_meta("consecutive failed servo health reads (about one a second) before holding", lo=0, hi=100),
    )
    camera_timeout_s: float = field(
        default=1.0,
        metadata=_meta("a real camera with no new frame for this long is a fault; older frames are refused",
                       lo=0.05, hi=60),
    )
    camera_fallback_synthetic: bool = field(
        default=True,
        metadata=_meta("feed a lost camera's synthetic scene to dry-run, the sim arm or a confirmed start"),
    )
    ui_heartbeat_s: float = field(
        default=1.0,
        metadata=_meta("hold when the UI sends no heartbeat for this long while the arm is live (0 = off)",
                       lo=0, hi=60),
    )


@dataclass(frozen=True)
class MacroSettings:
    waypoints: list[list[float]] = field(
        default_factory=list, metadata=_meta("joint-space waypoints, six values each (JOINT_NAMES order)")
    )
    seconds_per_waypoint: float = field(
        default=1.5, metadata=_meta("time to reach each waypoint", lo=0.1, hi=60)
    )
    start_pose: list[float] = field(
        default_factory=list, metadata=_meta("pose the arm must be near to start; [] = anywhere")
    )
    start_tolerance: float = field(
        default=25.0, metadata=_meta("largest joint distance from start_pose", lo=0.1, hi=360)
    )


def default_macros() -> dict[str, MacroSettings]:
    home = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    return {
        "home": MacroSettings(waypoints=[home], seconds_per_waypoint=2.0),
        "throw": MacroSettings(
            waypoints=[
                [0.0, -40.0, 60.0, 40.0, 0.0, 0.0],
                [0.0, 30.0, -20.0, -20.0, 0.0, 0.0],
                [0.0, 30.0, -20.0, -20.0, 0.0, 80.0],
                home,
            ],
            seconds_per_waypoint=0.8,
            start_pose=home,
            start_tolerance=25.0,
        ),
    }


@dataclass(frozen=True)
class LoggingSettings:
    dir: str = field(default="logs", metadata=_meta("folder for session logs (JSON Lines)"))
    log_ticks: bool = field(default=True, metadata=_meta("write one line per control tick"))


@dataclass(frozen=True)
class RecordingSettings:
    """Recording runs as LeRobot dataset episodes (lepetpal_tui/record): one episode per policy start."""

    enabled: bool = field(default=False, metadata=_meta("record from the start (the TUI key toggles it)"))
    root: str = field(default="recordings", metadata=_meta("folder of the LeRobot dataset"))
    repo_id: str = field(default="local/lepetpal", metadata=_meta("dataset repo id (user/name)"))
    store: Literal["video", "images"] = field(
        default="video", metadata=_meta('camera frames as "video" (encoded after each episode) or "images"')
    )
    codec: Literal["h264", "hevc", "libsvtav1"] = field(
        default="h264", metadata=_meta('video codec: "h264" (lightest on a small CPU), "hevc" or "libsvtav1"')
    )
    existing: Literal["resume", "new"] = field(
        default="resume",
        metadata=_meta('a dataset already in root: "resume" (append) or "new" (a fresh folder beside it)'),
    )
    on_quit: Literal["save", "discard"] = field(
        default="save", metadata=_meta('an episode still open at quit: "save" it or "discard" it')
    )


@dataclass(frozen=True)
class UISettings:
    camera: Literal["auto", "halfblock", "kitty", "sixel", "off"] = field(
        default="auto",
        metadata=_meta('Camera pane drawing: "auto" (Kitty or Sixel when the terminal answers, else half '
                       'blocks), "halfblock", "kitty", "sixel", or "off" (pane hidden, key c shows it)'),
    )
    camera_fps: float = field(
        default=5.0, metadata=_meta("Camera pane refresh rate (frames per second)", lo=0.2, hi=30)
    )


@dataclass(frozen=True)
class Settings:
    arm: ArmSettings = field(default_factory=ArmSettings)
    cameras: dict[str, CameraSettings] = field(default_factory=_default_cameras)
    model: ModelSettings = field(default_factory=ModelSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    macros: dict[str, MacroSettings] = field(default_factory=default_macros)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    ui: UISettings = field(default_factory=UISettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    # Not a file setting: where the values came from ("default", "file", "env:NAME", "flag:--x").
    source_path: str = ""
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_sim(self) -> bool:
        return self.arm.port == "sim"


def replace_setting(settings: Settings, key: str, value: Any) -> Settings:
    """A copy with one dotted key ("arm.port") changed."""
    section, _, leaf = key.partition(".")
    sub = getattr(settings, section)
    return dataclasses.replace(settings, **{section: dataclasses.replace(sub, **{leaf: value})})


def replace_sections(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy with several keys changed, by section: `replace_sections(s, arm={"port": "sim"})`."""
    for section, values in sections.items():
        settings = dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **values)})
    return settings
