"""`lepetpal model check` on the tiny checkpoint: fits, and each misfit gives its own specific error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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


def test_another_policy_type_is_named_not_dumped(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config.json that says "act" over SmolVLA's fields: one sentence, not LeRobot's list of every
    field ACTConfig lacks."""
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["type"] = "act"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    rc, out = _check(capsys, str(ckpt))
    assert rc == 2, out
    assert "holds a act policy, not SmolVLA" in out
    assert "not valid for" not in out and "Traceback" not in out


def test_a_backbone_neither_bundled_nor_cached_says_where_to_put_it(ckpt: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(ckpt / "vlm_backbone")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vlm_model_name"] = "someone/some-backbone"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    rc, out = _check(capsys, str(ckpt))  # the suite runs offline, with an empty cache of its own
    assert rc == 2, out
    assert "someone/some-backbone" in out and str(ckpt / "vlm_backbone") in out
    assert "set [model] path" not in out  # the checkpoint is fine; its backbone files are what is missing


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
    # Its own folder may be built again; a checkpoint it did not build is never written over.
    assert main(["make-test-policy", str(tmp_path / "two"), "--seed", "1"]) == 0
    theirs = tmp_path / "fine-tuned"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"type": "smolvla"}')
    (theirs / "model.safetensors").write_bytes(b"their weights")
    capsys.readouterr()
    assert main(["make-test-policy", str(theirs)]) == 2
    assert "did not build" in capsys.readouterr().err
    assert (theirs / "model.safetensors").read_bytes() == b"their weights"
    assert (theirs / "config.json").read_text() == '{"type": "smolvla"}'


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


# ------------------------------------------------------------------------- checkpoints from before 0.4


def _make_legacy(new: Path, legacy: Path) -> None:
    """The same weights as `new`, laid out as LeRobot < 0.4 saved them: the statistics inside
    model.safetensors as normalisation buffers, no policy_*processor* files."""
    from safetensors.numpy import load_file, save_file

    legacy.mkdir()
    shutil.copy(new / "config.json", legacy / "config.json")
    shutil.copytree(new / "vlm_backbone", legacy / "vlm_backbone")
    weights = load_file(str(new / "model.safetensors"))
    stats = load_file(str(next(new.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))))
    for key, value in stats.items():
        feature, _, stat = key.rpartition(".")
        buffer = feature.replace(".", "_")
        if feature == "action":
            weights[f"normalize_targets.buffer_{buffer}.{stat}"] = value
            weights[f"unnormalize_outputs.buffer_{buffer}.{stat}"] = value
        else:
            weights[f"normalize_inputs.buffer_{buffer}.{stat}"] = value
    save_file(weights, str(legacy / "model.safetensors"))


def _tree(dir: Path) -> dict[str, int]:
    return {str(p.relative_to(dir)): p.stat().st_mtime_ns for p in dir.rglob("*")}


def test_pre_0_4_checkpoint_is_converted_once_and_acts_the_same(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from lepetpal_tui.policy.legacy_checkpoint import converted_dir, is_legacy_checkpoint
    from lepetpal_tui.policy.load import load_policy
    from lepetpal_tui.policy.smolvla import warmup_observation
    from lepetpal_tui.settings import CameraSettings, ModelSettings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    legacy = tmp_path / "legacy"
    _make_legacy(ckpt, legacy)
    assert is_legacy_checkpoint(legacy) and not is_legacy_checkpoint(ckpt)
    before = _tree(legacy)

    rc, out = _check(capsys, str(legacy))
    assert rc == 0, out
    where = converted_dir(legacy)
    assert "ok   format" in out and "converted with LeRobot's migration" in out and str(where) in out, out
    assert "FITS" in out
    assert _tree(legacy) == before, "the original checkpoint was modified"
    marker = (where / "lepetpal_converted.json").stat().st_mtime_ns

    def chunk(path: Path) -> Any:
        runner: Any = load_policy(ModelSettings(path=str(path), fallback_to_scripted=False),
                                  {"front": CameraSettings()}, "degrees", lambda s: None)
        obs = warmup_observation(("front",), task="pick up the cube")
        return runner.raw_chunk(obs, noise=runner.make_noise(7))[0]

    ours, reference = chunk(legacy), chunk(ckpt)
    assert (where / "lepetpal_converted.json").stat().st_mtime_ns == marker, "converted a second time"
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_neither_format_keeps_a_clear_error(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for f in ckpt.glob("policy_*processor*"):
        f.unlink()  # new-style weights (no statistics inside) and no processor files: nothing to convert
    rc, out = _check(capsys, str(ckpt))
    assert rc == 2, out
    assert "FAIL files" in out and "policy_preprocessor.json" in out
    assert "no normalisation statistics" in out, out
