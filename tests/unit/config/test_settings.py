"""Resolution of settings: defaults, the shipped file, environment and flags, and origins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.settings import JOINT_NAMES, Settings, flatten, load_settings, origin_of

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "lepetpal.toml"


def test_shipped_file_loads_and_matches_defaults() -> None:
    s = load_settings(str(SHIPPED), environ={})
    d = Settings()
    # The shipped file documents the defaults: every value in it equals the built-in default.
    assert dict(flatten(s)) == dict(flatten(d))
    assert origin_of(s, "control.rate_hz") == "file lepetpal.toml"
    assert s.is_sim


def test_shipped_file_covers_every_setting() -> None:
    s = load_settings(str(SHIPPED), environ={})
    missing = [k for k, _ in flatten(s) if origin_of(s, k) == "default"]
    assert missing == []


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text("[control]\nrate_hz = 20\ndry_run = false\n[arm]\nport = '/dev/ttyACM0'\n")
    s = load_settings(str(cfg), environ={"INFERENCE_RATE_HZ": "25"})
    assert s.control.rate_hz == 25.0 and origin_of(s, "control.rate_hz") == "env INFERENCE_RATE_HZ"
    s = load_settings(str(cfg), flags={"control.rate_hz": 40.0}, environ={"INFERENCE_RATE_HZ": "25"})
    assert s.control.rate_hz == 40.0 and origin_of(s, "control.rate_hz") == "flag --rate-hz"
    s = load_settings(str(cfg), environ={"DRY_RUN": "1"})
    assert s.control.dry_run is True
    assert origin_of(s, "arm.port") == "file l.toml"


@pytest.mark.parametrize(
    ("port", "use_hw", "expect"),
    [("/dev/ttyACM0", "0", "sim"), ("sim", "1", "auto"), ("/dev/ttyACM0", "1", "/dev/ttyACM0")],
)
def test_use_hardware(tmp_path: Path, port: str, use_hw: str, expect: str) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text(f"[arm]\nport = '{port}'\n")
    assert load_settings(str(cfg), environ={"USE_HARDWARE": use_hw}).arm.port == expect


def test_sim_flag_beats_env(tmp_path: Path) -> None:
    s = load_settings(None, flags={"use_hardware": False}, environ={"ARM_PORT": "/dev/ttyUSB0"})
    assert s.arm.port == "sim" and origin_of(s, "arm.port") == "flag --sim"


def test_every_plan_variable_has_a_home() -> None:
    env = {
        "ARM_PORT": "/dev/ttyUSB1",
        "MODEL_MODE": "scripted",
        "MODEL_PATH": "lerobot/smolvla_base",
        "INFERENCE_RATE_HZ": "15",
        "DEVICE": "cpu",
        "DRY_RUN": "true",
        "HF_HUB_ENABLE_HF_TRANSFER": "1",
    }
    s = load_settings(None, environ=env)
    assert (s.arm.port, s.model.mode, s.model.path) == ("/dev/ttyUSB1", "scripted", "lerobot/smolvla_base")
    assert (s.control.rate_hz, s.model.device, s.control.dry_run, s.model.hf_transfer) == (
        15.0,
        "cpu",
        True,
        True,
    )


def test_partial_tables_keep_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text("[arm.limits]\nelbow_flex = [-50, 50]\n[macros.home]\nwaypoints = [[1,2,3,4,5,6]]\n")
    s = load_settings(str(cfg), environ={})
    assert s.arm.limits["elbow_flex"] == (-50.0, 50.0)
    assert s.arm.limits["shoulder_pan"] == Settings().arm.limits["shoulder_pan"]
    assert set(s.arm.limits) == set(JOINT_NAMES)
    assert "throw" in s.macros and s.macros["home"].waypoints == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]


def test_config_command_shows_origins() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lepetpal_tui", "config", "--config", str(SHIPPED), "--rate-hz", "12"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert lines["control.rate_hz"].endswith("flag --rate-hz") and "12.0" in lines["control.rate_hz"]
    assert lines["arm.port"].endswith("file lepetpal.toml")


def test_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "lepetpal_tui", "--version"], capture_output=True, text=True)
    assert out.stdout.startswith("lepetpal ")
    helped = subprocess.run([sys.executable, "-m", "lepetpal_tui", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "config" in helped.stdout


# A value each settings flag accepts, by setting key; flags without a value are store_true.
_FLAG_VALUES = {
    "arm.port": "/dev/ttyACM9", "model.mode": "scripted", "model.path": "someone/their_smolvla",
    "control.rate_hz": "25", "model.device": "cpu", "model.server": "127.0.0.1:9", "recording.root": "elsewhere",
}


@pytest.mark.parametrize("override", __import__("lepetpal_tui.settings.load", fromlist=["OVERRIDES"]).OVERRIDES,
                         ids=lambda o: o.flag)
def test_every_settings_flag_reaches_its_setting(override: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each flag the help lists must change its setting (--rec-root once parsed into a name nothing read)."""
    from lepetpal_tui.cli import settings_flags_parser, settings_from_args

    monkeypatch.chdir(tmp_path)  # no lepetpal.toml here: defaults, then the flag
    value = _FLAG_VALUES.get(override.key)
    argv = [override.flag] if value is None else [override.flag, value]
    args = settings_flags_parser().parse_args(argv)
    s = settings_from_args(args)
    assert origin_of(s, override.key) == f"flag {override.flag}", (override, argv)
