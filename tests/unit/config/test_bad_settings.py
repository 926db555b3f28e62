"""Every file in bad/ must give a clear error (exit code 2, no traceback) that names the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lepetpal_tui.settings import ConfigError, load_settings

BAD = sorted((Path(__file__).parent / "bad").glob("*.toml"))


def _expected(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    if first.startswith("# expect: "):
        return first.removeprefix("# expect: ")
    return "not UTF-8"


def test_corpus_is_large() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_file_raises_clear_error(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), environ={})
    message = str(info.value)
    assert _expected(path) in message
    assert str(path) in message or path.name in message  # names the file
    assert "Traceback" not in message


def test_cli_exit_code_and_no_traceback(tmp_path: Path) -> None:
    # One subprocess per file would be slow; the CLI path is the same for all of them, so run a sample
    # that covers a syntax error, a type error, an unknown key and a cross-field rule.
    sample = [p for p in BAD if p.stem.split("_")[0] in {"01", "06", "16", "23", "30"}]
    assert len(sample) == 5
    for path in sample:
        proc = subprocess.run(
            [sys.executable, "-m", "lepetpal_tui", "config", "--config", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            timeout=60,
        )
        assert proc.returncode == 2, (path, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert _expected(path) in proc.stderr
        assert proc.stdout == ""


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "two.toml"
    cfg.write_text('[control]\nrate_hz = "x"\n[model]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg), environ={})
    assert "2 settings problems" in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(str(tmp_path / "nope.toml"), environ={})


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"INFERENCE_RATE_HZ": "fast"}, "$INFERENCE_RATE_HZ"),
        ({"DRY_RUN": "maybe"}, "not a yes/no value"),
        ({"USE_HARDWARE": "perhaps"}, "$USE_HARDWARE"),
        ({"DEVICE": "tpu"}, '"auto", "cpu", "cuda", "mps"'),
        ({"MODEL_MODE": "act"}, '"smolvla", "scripted"'),
    ],
)
def test_bad_environment_values(env: dict[str, str], expect: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ=env)
    assert expect in str(info.value)


@pytest.mark.parametrize(("flags", "environ", "words"), [
    ({"use_hardware": False, "arm.port": "/dev/ttyACM0"}, {}, "--sim and --port /dev/ttyACM0 contradict"),
    ({"use_hardware": True, "arm.port": "sim"}, {}, "--hardware and --port sim contradict"),
    ({}, {"USE_HARDWARE": "1", "ARM_PORT": "sim"}, "$ARM_PORT=sim names the simulated one"),
    ({"model.server": "localhost"}, {}, '--policy-server: [model.server] = "localhost" is not a "host:port"'),
    ({}, {"POLICY_SERVER": "127.0.0.1:99999"}, "$POLICY_SERVER: [model.server]"),
    ({}, {"INFERENCE_RATE_HZ": "abc"}, "Fix (or unset) what each line names"),
])
def test_overrides_that_contradict_or_cannot_work_are_refused(flags: dict[str, object], environ: dict[str, str],
                                                              words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, flags=flags, environ=environ)
    assert words in str(info.value)


def test_use_hardware_0_beside_a_device_port_is_a_toggle_not_a_conflict() -> None:
    s = load_settings(None, environ={"USE_HARDWARE": "0", "ARM_PORT": "/dev/ttyACM0"})
    assert s.arm.port == "sim"


def test_a_folder_given_as_the_settings_file_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="is a folder; give the settings file itself"):
        load_settings(str(tmp_path), environ={})
    monkeypatch.setenv("LEPETPAL_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match="points to the folder"):
        load_settings(None, environ={})
