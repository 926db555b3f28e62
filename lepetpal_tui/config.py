"""`lepetpal.toml` → typed, validated settings, with the origin of every value.

Precedence: CLI flag > environment variable > settings file > built-in default.
A bad file never produces a traceback: `load_settings` raises `ConfigError`, whose message names the
file, the key, the value and what is accepted; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
DEFAULT_CONFIG_NAME = "lepetpal.toml"
CONFIG_ENV = "LEPETPAL_CONFIG"


class ConfigError(Exception):
    """A settings problem the user must fix; the message says what and how."""


def _meta(doc: str, *, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"doc": doc, "lo": lo, "hi": hi}


# ---------------------------------------------------------------------------------------------- schema


def _default_limits() -> dict[str, tuple[float, float]]:
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
        default_factory=_default_limits, metadata=_meta("per-joint [min, max] in joint units")
    )


@dataclass(frozen=True)
class CameraSettings:
    source: int | str = field(
        default="synthetic", metadata=_meta('device index, video file path, or "synthetic"')
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


def _default_macros() -> dict[str, MacroSettings]:
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
class Settings:
    arm: ArmSettings = field(default_factory=ArmSettings)
    cameras: dict[str, CameraSettings] = field(default_factory=_default_cameras)
    model: ModelSettings = field(default_factory=ModelSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    macros: dict[str, MacroSettings] = field(default_factory=_default_macros)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    # Not a file setting: where the values came from ("default", "file", "env:NAME", "flag:--x").
    source_path: str = ""
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_sim(self) -> bool:
        return self.arm.port == "sim"


# ------------------------------------------------------------------------- environment and CLI overrides


@dataclass(frozen=True)
class Override:
    key: str  # dotted settings key
    env: str
    flag: str


OVERRIDES: tuple[Override, ...] = (
    Override("arm.port", "ARM_PORT", "--port"),
    Override("model.mode", "MODEL_MODE", "--model-mode"),
    Override("model.path", "MODEL_PATH", "--model-path"),
    Override("control.rate_hz", "INFERENCE_RATE_HZ", "--rate-hz"),
    Override("model.device", "DEVICE", "--device"),
    Override("control.dry_run", "DRY_RUN", "--dry-run"),
    Override("model.hf_transfer", "HF_HUB_ENABLE_HF_TRANSFER", "--hf-transfer"),
    Override("recording.enabled", "RECORD", "--rec"),
    Override("recording.root", "RECORD_ROOT", "--rec-root"),
)
# USE_HARDWARE / --sim / --hardware steer arm.port: false -> "sim"; true with port "sim" -> "auto".
USE_HARDWARE_ENV = "USE_HARDWARE"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool_text(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(
        f"{where} is {text!r}, which is not a yes/no value. Use 1/0, true/false, yes/no or on/off."
    )


# ------------------------------------------------------------------------------------------ validation


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, value: Any, accepted: str) -> None:
        shown = _show(value)
        self.items.append(f"{self.source}: [{key}] = {shown} is not accepted; expected {accepted}.")

    def unknown(self, key: str, known: list[str]) -> None:
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        section = key.rsplit(".", 1)[0] if "." in key else "top level"
        self.items.append(
            f'{self.source}: unknown setting "{key}".{hint} Known keys in {section}: {", ".join(known)}.'
        )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" between {lo:g} and {hi:g}"
    if lo is not None:
        return f" of at least {lo:g}"
    return ""


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any], errs: _Errors) -> Any:
    """Check one value against its declared type; returns the typed value or None after recording an error."""
    lo, hi = meta.get("lo"), meta.get("hi")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        errs.add(key, value, "one of " + ", ".join(f'"{c}"' for c in choices))
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        errs.add(key, value, "true or false")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                errs.add(key, value, "a whole number" + _range_text(lo, hi))
                return None
            return value
        errs.add(key, value, "a whole number" + _range_text(lo, hi))
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                errs.add(key, value, "a number" + _range_text(lo, hi))
                return None
            return float(value)
        errs.add(key, value, "a number" + _range_text(lo, hi))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errs.add(key, value, "a text string in quotes")
        return None
    if origin in (types.UnionType, typing.Union):  # int | str (camera source)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                errs.add(key, value, "a device index of 0 or more")
                return None
            return value
        if isinstance(value, str) and value:
            return value
        errs.add(key, value, 'a device index (0, 1, ...), a video file path, or "synthetic"')
        return None
    if origin is tuple:  # joint limit [min, max]
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )
        ):
            if value[0] >= value[1]:
                errs.add(key, value, "[min, max] with min smaller than max")
                return None
            return (float(value[0]), float(value[1]))
        errs.add(key, value, "a pair of numbers [min, max]")
        return None
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            errs.add(key, value, "a list")
            return None
        if inner is float:
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                errs.add(key, value, "a list of numbers")
                return None
            return [float(v) for v in value]
        out = [_coerce(v, inner, f"{key}[{i}]", meta, errs) for i, v in enumerate(value)]
        return None if any(v is None for v in out) else out
    raise TypeError(f"unsupported settings type {tp!r}")  # a programming error, caught by the tests


def _build(cls: type, raw: Any, prefix: str, errs: _Errors, origins: dict[str, str], origin: str) -> Any:
    """Build dataclass `cls` from a TOML table, recording errors and the origin of each key present."""
    if not isinstance(raw, dict):
        errs.add(prefix, raw, "a table ([" + prefix + "])")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source_path", "origins")}
    known = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            errs.unknown(full, known)
            continue
        f = fields[key]
        tp = hints[key]
        built = _build_value(tp, value, full, f.metadata, errs, origins, origin, f)
        if built is not None:
            kwargs[key] = built
            if _is_leaf(tp) and full != "arm.limits":
                origins.setdefault(full, origin)
    return cls(**kwargs)


def _is_leaf(tp: Any) -> bool:
    """A value whose origin is recorded as one (not a table of further settings)."""
    if dataclasses.is_dataclass(tp):
        return False
    if typing.get_origin(tp) is dict:
        return not dataclasses.is_dataclass(typing.get_args(tp)[1])
    return True


def _build_value(
    tp: Any,
    value: Any,
    full: str,
    meta: Mapping[str, Any],
    errs: _Errors,
    origins: dict[str, str],
    origin: str,
    f: dataclasses.Field[Any] | None = None,
) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, full, errs, origins, origin)  # type: ignore[arg-type]
    if typing.get_origin(tp) is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            errs.add(full, value, "a table")
            return None
        if full == "arm.limits":
            return _build_limits(value, full, errs, origins, origin, meta)
        # Macros merge over the built-in ones (a file that only tunes "home" keeps "throw");
        # cameras replace them (the file lists the cameras that exist).
        out: dict[str, Any] = _default_macros() if full == "macros" else {}
        for name, item in value.items():
            item_key = f"{full}.{name}"
            if dataclasses.is_dataclass(val_tp):
                out[name] = _build(val_tp, item, item_key, errs, origins, origin)  # type: ignore[arg-type]
            else:
                v = _coerce(item, val_tp, item_key, meta, errs)
                if v is not None:
                    out[name] = v
        if full == "cameras" and not out:
            errs.add(full, value, "at least one camera table, e.g. [cameras.front]")
        return out
    return _coerce(value, tp, full, meta, errs)


def _build_limits(
    value: dict[str, Any],
    full: str,
    errs: _Errors,
    origins: dict[str, str],
    origin: str,
    meta: Mapping[str, Any],
) -> dict[str, tuple[float, float]]:
    limits = _default_limits()
    for name, item in value.items():
        key = f"{full}.{name}"
        if name not in JOINT_NAMES:
            errs.unknown(key, list(JOINT_NAMES))
            continue
        pair = _coerce(item, tuple[float, float], key, meta, errs)
        if pair is not None:
            limits[name] = pair
            origins[key] = origin
    return limits


def _check_cross_field(s: Settings, errs: _Errors) -> None:
    """Rules that involve more than one value."""
    if s.safety.min_voltage_v >= s.safety.max_voltage_v:
        errs.add(
            "safety.min_voltage_v",
            s.safety.min_voltage_v,
            f"a value below safety.max_voltage_v ({s.safety.max_voltage_v:g})",
        )
    lo, hi = s.arm.limits["gripper"]
    if lo < 0 or hi > 100:
        errs.add("arm.limits.gripper", [lo, hi], "a range inside [0, 100] (the gripper is 0-100)")
    for name, macro in s.macros.items():
        for i, wp in enumerate(macro.waypoints):
            if len(wp) != len(JOINT_NAMES):
                errs.add(
                    f"macros.{name}.waypoints[{i}]",
                    wp,
                    f"six numbers, one per joint ({', '.join(JOINT_NAMES)})",
                )
        if macro.start_pose and len(macro.start_pose) != len(JOINT_NAMES):
            errs.add(f"macros.{name}.start_pose", macro.start_pose, "six numbers, or [] for anywhere")
    for src, dst in s.model.camera_map.items():
        if src not in s.cameras:
            errs.add(
                f"model.camera_map.{src}",
                dst,
                f"a key naming one of the configured cameras ({', '.join(s.cameras)})",
            )


# --------------------------------------------------------------------------------------------- loading


def find_config_file(explicit: str | None) -> Path | None:
    """--config, then $LEPETPAL_CONFIG, then ./lepetpal.toml; None means built-in defaults."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(
                f"Settings file {p} does not exist. Check the --config path, or omit --config to use "
                f"./{DEFAULT_CONFIG_NAME} or the built-in defaults."
            )
        return p
    env = os.environ.get(CONFIG_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ConfigError(f"${CONFIG_ENV} points to {p}, which does not exist. Fix or unset it.")
        return p
    p = Path.cwd() / DEFAULT_CONFIG_NAME
    return p if p.is_file() else None


def parse_toml_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 and retry."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot read settings file {path}: {exc.strerror}. Check the path and permissions."
        ) from None
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        msg = getattr(exc, "msg", str(exc))
        line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
        lines = text.splitlines()
        shown = ""
        if line and 0 < line <= len(lines):
            shown = f' The line reads: "{lines[line - 1].strip()}".'
        raise ConfigError(
            f"{path} is not valid TOML: {msg} at line {line}, column {col}.{shown} "
            "Fix the syntax (strings need quotes, tables are [name], lists are [a, b]) and retry."
        ) from None


def _apply(settings: Settings, key: str, value: Any) -> Settings:
    section, _, leaf = key.partition(".")
    sub = getattr(settings, section)
    return dataclasses.replace(settings, **{section: dataclasses.replace(sub, **{leaf: value})})


def _field_of(key: str) -> tuple[Any, Mapping[str, Any]]:
    section, _, leaf = key.partition(".")
    cls = typing.get_type_hints(Settings)[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == leaf)
    return typing.get_type_hints(cls)[leaf], f.metadata


def _parse_text_value(text: str, key: str, where: str, errs: _Errors) -> Any:
    tp, meta = _field_of(key)
    if tp is bool:
        try:
            return parse_bool_text(text, where)
        except ConfigError as exc:
            errs.items.append(str(exc))
            return None
    value: Any = text
    if tp in (int, float):
        with contextlib.suppress(ValueError):
            value = int(text) if tp is int else float(text)
    sub = _Errors(where)
    out = _coerce(value, tp, key, meta, sub)
    errs.items.extend(sub.items)
    return out


def load_settings(
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from defaults, the file, the environment and CLI flags (in rising precedence).

    `flags` maps dotted keys to values already parsed by argparse (`None` = not given), plus the special
    key "use_hardware" (bool) for --sim/--hardware.
    """
    env = os.environ if environ is None else environ
    flags = flags or {}
    path = find_config_file(config_path)
    origins: dict[str, str] = {}
    settings = Settings()
    if path is not None:
        raw = parse_toml_file(path)
        errs = _Errors(str(path))
        settings = _build(Settings, raw, "", errs, origins, f"file {path.name}")
        if not errs.items:
            _check_cross_field(settings, errs)
        if errs.items:
            raise ConfigError(_join(errs.items))
        settings = dataclasses.replace(settings, source_path=str(path))

    errs = _Errors("environment")
    use_hw_env = env.get(USE_HARDWARE_ENV)
    for ov in OVERRIDES:
        text = env.get(ov.env)
        if text is None or (ov.key != "model.path" and text == ""):
            continue
        value = _parse_text_value(text, ov.key, f"${ov.env}", errs)
        if value is not None:
            settings = _apply(settings, ov.key, value)
            origins[ov.key] = f"env {ov.env}"
    if use_hw_env not in (None, ""):
        try:
            settings = _use_hardware(
                settings,
                parse_bool_text(use_hw_env, f"${USE_HARDWARE_ENV}"),
                origins,
                f"env {USE_HARDWARE_ENV}",
            )
        except ConfigError as exc:
            errs.items.append(str(exc))

    for ov in OVERRIDES:
        value = flags.get(ov.key)
        if value is None:
            continue
        if isinstance(value, str) and ov.key not in ("arm.port", "model.path", "model.mode", "model.device"):
            value = _parse_text_value(value, ov.key, ov.flag, errs)
        else:
            sub = _Errors(ov.flag)
            tp, meta = _field_of(ov.key)
            value = _coerce(value, tp, ov.key, meta, sub)
            errs.items.extend(sub.items)
        if value is not None:
            settings = _apply(settings, ov.key, value)
            origins[ov.key] = f"flag {ov.flag}"
    use_hw_flag = flags.get("use_hardware")
    if use_hw_flag is not None:
        settings = _use_hardware(
            settings, bool(use_hw_flag), origins, "flag --hardware" if use_hw_flag else "flag --sim"
        )
    if errs.items:
        raise ConfigError(_join(errs.items))
    return dataclasses.replace(settings, origins=origins)


def _use_hardware(settings: Settings, on: bool, origins: dict[str, str], origin: str) -> Settings:
    if not on:
        origins["arm.port"] = origin
        return _apply(settings, "arm.port", "sim")
    if settings.arm.port == "sim":
        origins["arm.port"] = origin
        return _apply(settings, "arm.port", "auto")
    return settings


def _join(items: list[str]) -> str:
    head = "Settings problem" if len(items) == 1 else f"{len(items)} settings problems"
    return (
        head
        + ":\n  "
        + "\n  ".join(items)
        + "\nFix the file (see the comments in the shipped lepetpal.toml) and retry."
    )


# ------------------------------------------------------------------------------------------- reporting


def flatten(settings: Settings) -> list[tuple[str, Any]]:
    """(dotted key, value) for every setting, in declaration order."""
    out: list[tuple[str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if f.name in ("source_path", "origins"):
                    continue
                walk(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
        elif (
            isinstance(obj, dict)
            and obj
            and (prefix in ("cameras", "macros") or dataclasses.is_dataclass(next(iter(obj.values()))))
        ):
            for k, v in obj.items():
                walk(v, f"{prefix}.{k}")
        elif isinstance(obj, dict) and prefix == "arm.limits":
            for k, v in obj.items():
                out.append((f"{prefix}.{k}", list(v)))
        else:
            out.append((prefix, obj))

    walk(settings, "")
    return out


def origin_of(settings: Settings, key: str) -> str:
    """Where a value came from: "default", "file NAME", "env VAR" or "flag --x"."""
    return settings.origins.get(key, "default")


def joint_vector(values: Mapping[str, float]) -> list[float]:
    """Order a joint mapping as JOINT_NAMES."""
    return [float(values[j]) for j in JOINT_NAMES]
