"""`lepetpal model check` on the tiny checkpoint: fits, and each misfit gives its own specific error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lepetpal_tui.cli import main


@pytest.fixture
def ckpt(tiny_policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny checkpoint; cwd is an empty folder (no lepetpal.toml)."""
    monkeypatch.delenv("LEPETPAL_CONFIG", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_policy_dir, copy)
    return copy


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["model", "check", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_fits(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _check(capsys, str(ckpt))
    assert rc == 0, out
    assert "FITS" in out and "FAIL" not in out
    assert "checkpoint: front" in out and "cpu / fp32" in out
    assert "50 actions x 6 joints" in out and "parameters" in out and "inference" in out
    assert "Reducing the number" not in out  # LeRobot's prints are kept off the terminal


def test_camera_name_mismatch(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("lepetpal.toml").write_text('[cameras.wrist]\nsource = "synthetic"\n')
    rc, out = _check(capsys, str(ckpt))
    assert rc == 2, out
    assert "FAIL cameras" in out and "checkpoint cameras: front" in out and "wrist" in out
    assert '[model.camera_map]' in out and "[cameras.front]" in out
    # The suggested fix works.
    Path("lepetpal.toml").write_text('[cameras.wrist]\nsource = "synthetic"\n[model.camera_map]\nwrist = "front"\n')
    rc, out = _check(capsys, str(ckpt))
    assert rc == 0, out


def test_missing_statistics_file(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = next(ckpt.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    stats.unlink()
    rc, out = _check(capsys, str(ckpt))
    assert rc == 2, out
    assert "FAIL statistics" in out and stats.name in out and "is missing" in out


def test_units_mismatch(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("lepetpal.toml").write_text('[arm]\nunits = "normalized"\n')
    rc, out = _check(capsys, str(ckpt))
    assert rc == 2, out
    assert "FAIL units" in out and 'units = "degrees"' in out


def test_saved_on_cuda_loads_on_cpu_with_note(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["device"] = "cuda"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        pipe = json.loads((ckpt / name).read_text())
        for step in pipe["steps"]:
            if step["registry_name"] == "device_processor":
                step["config"]["device"] = "cuda"
        (ckpt / name).write_text(json.dumps(pipe))
    rc, out = _check(capsys, str(ckpt), "--device", "cpu")
    assert rc == 0, out
    assert "saved for cuda; loading on cpu" in out and "cpu / fp32" in out


def test_corrupt_weights(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, out = _check(capsys, str(ckpt))
    assert rc == 2, out
    assert "model.safetensors" in out and "damaged or incomplete" in out
    assert "Traceback" not in out


def test_unknown_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out = _check(capsys, str(tmp_path / "missing-folder"))
    assert rc == 2 and "does not exist" in out


def test_make_test_policy_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["make-test-policy", str(tmp_path / "two"), "--camera", "top", "--camera", "wrist"])
    assert rc == 0
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert set(cfg["input_features"]) == {"observation.images.top", "observation.images.wrist", "observation.state"}
    assert main(["make-test-policy", str(tmp_path / "bad"), "--camera", "a b"]) == 2
    assert "not valid" in capsys.readouterr().err


def _set_num_steps(ckpt: Path, steps: int) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_steps"] = steps
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=4))


def test_flow_steps_default_to_the_checkpoints_own(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _set_num_steps(ckpt, 5)  # trained with 5: must run with 5 unless the user says otherwise
    rc, out = _check(capsys, str(ckpt))
    assert rc == 0, out
    assert "flow steps           5 (the checkpoint's own)" in out, out


def test_flow_steps_setting_overrides_and_says_so(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _set_num_steps(ckpt, 5)
    Path("lepetpal.toml").write_text("[model]\nflow_steps = 3\n")
    rc, out = _check(capsys, str(ckpt))
    assert rc == 0, out
    assert "3 ([model] flow_steps; the checkpoint says 5)" in out, out
