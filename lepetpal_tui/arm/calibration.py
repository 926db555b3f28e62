"""Calibration files (LeRobot's format) and a prompt-free range-of-motion recorder.

The file is LeRobot's `dict[str, MotorCalibration]` as JSON, at
`<calibration_dir>/<robot_id>.json`, so `lerobot-*` tools and lepetpal share it. The simulated arm uses
`<robot_id>_sim.json` in the same folder: a default sim calibration must never be picked up by a real arm.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lepetpal_tui.settings import JOINT_NAMES, ArmSettings

__all__ = [
    "FULL_TURN_JOINT",
    "CalibrationError",
    "JointCalibration",
    "calibration_dir",
    "calibration_id",
    "calibration_path",
    "default_sim_calibration",
    "load_calibration",
    "record_calibration",
    "save_calibration",
]

FULL_TURN_JOINT = "wrist_roll"  # turns freely: LeRobot records no range for it and uses 0..4095
HALF_TURN = 2047  # where set_half_turn_homings puts the pose the arm is in (4096-step encoder)
MAX_RAW = 4095


class CalibrationError(Exception):
    """A calibration problem the user must fix; the message says what and how."""


@dataclass(frozen=True)
class JointCalibration:
    """One joint, field for field LeRobot's MotorCalibration."""

    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


Calibration = dict[str, JointCalibration]


def calibration_dir(arm: ArmSettings) -> Path:
    """The configured folder, or LeRobot's default (honouring HF_LEROBOT_CALIBRATION / HF_LEROBOT_HOME /
    HF_HOME like LeRobot does; computed here to keep this module free of heavy imports)."""
    if arm.calibration_dir:
        return Path(arm.calibration_dir).expanduser()
    if os.environ.get("HF_LEROBOT_CALIBRATION"):
        base = Path(os.environ["HF_LEROBOT_CALIBRATION"]).expanduser()
    else:
        hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
        lerobot_home = Path(os.environ.get("HF_LEROBOT_HOME", str(hf_home / "lerobot"))).expanduser()
        base = lerobot_home / "calibration"
    return base / "robots" / "so_follower"


def calibration_id(arm: ArmSettings, is_sim: bool) -> str:
    return f"{arm.robot_id}_sim" if is_sim else arm.robot_id


def calibration_path(arm: ArmSettings, is_sim: bool) -> Path:
    return calibration_dir(arm) / f"{calibration_id(arm, is_sim)}.json"


def default_sim_calibration() -> Calibration:
    """A plausible SO-101 calibration centred on the simulated servos' rest position (2048): body joints
    +-1300 steps (about +-114 degrees, wider than the default joint limits), wrist roll a full turn,
    gripper closed at rest."""
    out: Calibration = {}
    for i, name in enumerate(JOINT_NAMES, start=1):
        if name == FULL_TURN_JOINT:
            lo, hi = 0, MAX_RAW
        elif name == "gripper":
            lo, hi = 2048, 3400
        else:
            lo, hi = 748, 3347
        out[name] = JointCalibration(id=i, drive_mode=0, homing_offset=0, range_min=lo, range_max=hi)
    return out


def save_calibration(path: Path, calibration: Mapping[str, JointCalibration]) -> None:
    """Write atomically (a half-written calibration would misplace every joint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in calibration.items()}, indent=4) + "\n")
    os.replace(tmp, path)


def load_calibration(path: Path) -> Calibration:
    """Read and check a calibration file; raises CalibrationError with the fix."""
    redo = f"Run `lepetpal calibrate` to record a new one (it replaces {path})."
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"No calibration file at {path}. {redo}") from None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"The calibration file {path} cannot be read ({exc}). {redo}") from None
    if not isinstance(raw, dict):
        raise CalibrationError(f"The calibration file {path} is not a JSON object of joints. {redo}")
    missing = [j for j in JOINT_NAMES if j not in raw]
    if missing:
        raise CalibrationError(f"The calibration file {path} lacks joints {', '.join(missing)}. {redo}")
    out: Calibration = {}
    for i, joint in enumerate(JOINT_NAMES, start=1):
        entry = raw[joint]
        try:
            cal = JointCalibration(**{k: int(entry[k]) for k in JointCalibration.__dataclass_fields__})
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(
                f"The calibration file {path} has an incomplete entry for {joint} "
                f"(needs id, drive_mode, homing_offset, range_min, range_max). {redo}"
            ) from None
        if cal.id != i or not 0 <= cal.range_min < cal.range_max <= MAX_RAW:
            raise CalibrationError(
                f"The calibration file {path} has impossible values for {joint} "
                f"(id {cal.id}, range {cal.range_min}..{cal.range_max}). {redo}"
            )
        out[joint] = cal
    return out


Sample = dict[str, tuple[int, int, int]]  # joint -> (min, position, max), raw steps


def record_calibration(
    bus: Any,
    *,
    wait_for_middle: Callable[[], None],
    stop: Callable[[], bool],
    on_sample: Callable[[Sample], None] | None = None,
    period_s: float = 0.02,
) -> Calibration:
    """LeRobot's SO-101 calibration procedure through its bus API, without its stdin prompts.

    `bus` is a connected LeRobot FeetechMotorsBus. Torque goes off (the user moves the arm by hand),
    `wait_for_middle` returns once the arm is at the middle of its range, the homing offsets make that
    pose read 2047, then positions are sampled until `stop()` returns True. Writes nothing to disk; the
    caller writes the result to the motors and the file."""
    joints = list(JOINT_NAMES)
    bus.disable_torque()
    for joint in joints:
        bus.write("Operating_Mode", joint, 0)  # position mode
    wait_for_middle()
    homings = bus.set_half_turn_homings()
    recorded = [j for j in joints if j != FULL_TURN_JOINT]
    first = bus.sync_read("Present_Position", recorded, normalize=False, num_retry=5)
    mins = {j: int(first[j]) for j in recorded}
    maxes = dict(mins)
    while True:
        pos = bus.sync_read("Present_Position", recorded, normalize=False, num_retry=5)
        for j in recorded:
            mins[j] = min(mins[j], int(pos[j]))
            maxes[j] = max(maxes[j], int(pos[j]))
        if on_sample is not None:
            on_sample({j: (mins[j], int(pos[j]), maxes[j]) for j in recorded})
        if stop():
            break
        time.sleep(period_s)
    still = [j for j in recorded if maxes[j] - mins[j] < 20]
    if still:
        raise CalibrationError(
            f"These joints did not move (less than 2 degrees): {', '.join(still)}. Move every joint except "
            f"{FULL_TURN_JOINT} through its whole range while recording, then run `lepetpal calibrate` again."
        )
    mins[FULL_TURN_JOINT], maxes[FULL_TURN_JOINT] = 0, MAX_RAW
    return {
        j: JointCalibration(
            id=i, drive_mode=0, homing_offset=int(homings[j]), range_min=mins[j], range_max=maxes[j]
        )
        for i, j in enumerate(joints, start=1)
    }

