"""Calibration files: LeRobot's format, where they live, and clear errors for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lepetpal_tui.arm import ports as P
from lepetpal_tui.arm.adapter import Arm, ArmError
from lepetpal_tui.arm.calibration import (
    CalibrationError,
    calibration_dir,
    calibration_path,
    default_sim_calibration,
    load_calibration,
    save_calibration,
)
from lepetpal_tui.settings import JOINT_NAMES, ArmSettings, SafetySettings


def test_round_trip_and_lerobot_reads_our_file(tmp_path: Path) -> None:
    cal = default_sim_calibration()
    path = tmp_path / "robot.json"
    save_calibration(path, cal)
    assert load_calibration(path) == cal
    assert list(json.loads(path.read_text())) == list(JOINT_NAMES)

    import draccus
    from lerobot.motors import MotorCalibration

    with open(path) as fh, draccus.config_type("json"):
        theirs = draccus.load(dict[str, MotorCalibration], fh)  # type: ignore[type-var]
    assert theirs["gripper"] == MotorCalibration(id=6, drive_mode=0, homing_offset=0, range_min=2048, range_max=3400)


def test_default_sim_calibration_covers_the_default_joint_limits() -> None:
    cal = default_sim_calibration()
    for joint, (lo, hi) in ArmSettings().limits.items():
        c = cal[joint]
        if joint == "gripper":
            continue
        mid = (c.range_min + c.range_max) / 2
        lo_raw, hi_raw = mid + lo * 4095 / 360, mid + hi * 4095 / 360  # LeRobot's DEGREES mapping
        assert c.range_min <= lo_raw and hi_raw <= c.range_max, joint


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{oops", "cannot be read"),
        ("[]", "not a JSON object"),
        (json.dumps({"shoulder_pan": {}}), "lacks joints"),
    ],
)
def test_bad_files_say_how_to_fix(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=expected) as info:
        load_calibration(path)
    assert "lepetpal calibrate" in str(info.value)


def test_impossible_ranges_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    save_calibration(path, default_sim_calibration())
    raw = json.loads(path.read_text())
    raw["elbow_flex"]["range_min"] = raw["elbow_flex"]["range_max"]
    path.write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match="elbow_flex"):
        load_calibration(path)


def test_where_files_live(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arm = ArmSettings(calibration_dir=str(tmp_path), robot_id="bob")
    assert calibration_path(arm, is_sim=False) == tmp_path / "bob.json"
    assert calibration_path(arm, is_sim=True) == tmp_path / "bob_sim.json"  # never the real arm's file
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "cal"))
    assert calibration_dir(ArmSettings()) == tmp_path / "cal" / "robots" / "so_follower"
    monkeypatch.delenv("HF_LEROBOT_CALIBRATION")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    assert calibration_dir(ArmSettings()) == tmp_path / "home" / "calibration" / "robots" / "so_follower"


def test_arm_refuses_non_finite_goals_before_touching_the_bus() -> None:
    arm = Arm(ArmSettings(), "/dev/null", SafetySettings())
    with pytest.raises(ArmError, match="finite"):
        arm.write_goals(np.array([0.0, 0.0, np.inf, 0.0, 0.0, 0.0]))
    with pytest.raises(ArmError, match="not connected"):
        arm.write_goals(np.zeros(6))
    arm.disconnect()  # never connected: still fine


def test_missing_port_is_explained(tmp_path: Path) -> None:
    arm = Arm(ArmSettings(calibration_dir=str(tmp_path)), "/dev/ttyNOPE7", SafetySettings(), is_sim=True)
    with pytest.raises(ArmError, match=r"does not exist.*lepetpal ports"):
        arm.connect()


@pytest.mark.parametrize("port", ["/dev/null", "regular-file"])
def test_a_path_that_is_no_serial_port_is_said_so_before_the_calibration(tmp_path: Path, port: str) -> None:
    """Not "in use by" every process that holds /dev/null, nor "no calibration file" (whose fix, calibrate,
    would fail on the same port)."""
    if port == "regular-file":
        port = str(tmp_path / "lepetpal.toml")
        Path(port).write_text("[arm]\n")
    empty_calibration = tmp_path / "no-calibration-here"
    arm = Arm(ArmSettings(calibration_dir=str(empty_calibration)), port, SafetySettings())
    with pytest.raises(ArmError, match=r"is not a serial port.*lepetpal ports") as info:
        arm.connect()
    assert "calibration" not in str(info.value) and "in use" not in str(info.value)
    assert "is not a serial port" in P.probe_port(port).note
