"""load_policy on the tiny offline checkpoint: local folders, statuses, overrides, fallback, demo cache."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from lepetpal_tui.policy.load import ChunkPolicy, PolicyCancelled, PolicyError, load_policy
from lepetpal_tui.policy.scripted import ScriptedPolicy
from lepetpal_tui.settings import CameraSettings, ModelSettings
from lepetpal_tui.wire import ModelStatus, Observation

CAMS = {"front": CameraSettings()}


def _obs(cam: str = "front") -> Observation:
    img = np.full((480, 640, 3), 90, np.uint8)
    return Observation(joints=np.array([0.0, 10.0, -10.0, 5.0, 0.0, 30.0]), images={cam: img}, task="pick",
                       timestamp=1.0)


def _load(path: Path | str, statuses: list[ModelStatus] | None = None, cams: dict[str, CameraSettings] = CAMS,
          **kw: object) -> ChunkPolicy:
    model = ModelSettings(path=str(path), fallback_to_scripted=False, **kw)  # type: ignore[arg-type]
    return load_policy(model, cams, "degrees", (statuses if statuses is not None else []).append)


def test_loads_after_copy_and_infers(tiny_policy_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "moved"
    shutil.copytree(tiny_policy_dir, copy)
    statuses: list[ModelStatus] = []
    policy = _load(copy, statuses, actions_per_chunk=20, flow_steps=3)
    assert isinstance(policy, ChunkPolicy)
    assert (policy.name, policy.device, policy.dtype, policy.chunk_length) == ("smolvla", "cpu", "fp32", 20)
    assert 200_000 < policy.parameters < 600_000
    phases = [s.phase for s in statuses]
    assert phases[0] == "resolving" and phases[-1] == "ready" and "warming_up" in phases
    ready = statuses[-1]
    assert ready.warmup_s is not None and ready.warmup_s > 0 and ready.parameters == policy.parameters
    assert ready.preflight and all(c.ok for c in ready.preflight)
    chunk = policy.infer(_obs())
    assert chunk.actions.shape == (20, 6) and chunk.actions.dtype == np.float64
    assert np.all(np.isfinite(chunk.actions))
    assert chunk.timing.model_s > 0 and chunk.timing.preprocess_s > 0 and chunk.observed_at == 1.0
    # Statistics are applied: the actions sit around the action mean (0, gripper 30), in degrees.
    assert abs(float(np.mean(chunk.actions[:, 5])) - 30.0) < 25.0
    policy.reset()


def test_config_overrides_flow_steps(tiny_policy_dir: Path) -> None:
    policy = _load(tiny_policy_dir, flow_steps=2)
    assert policy.policy.config.num_steps == 2  # type: ignore[attr-defined]


def test_flow_steps_unset_keeps_the_checkpoints_num_steps(tiny_policy_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "five-steps"
    shutil.copytree(tiny_policy_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["num_steps"] = 5
    (copy / "config.json").write_text(json.dumps(cfg))
    policy = _load(copy)
    assert ModelSettings().flow_steps == 0
    assert policy.policy.config.num_steps == 5  # type: ignore[attr-defined]


def test_camera_map_renames(tiny_policy_dir: Path) -> None:
    cams = {"top": CameraSettings()}
    policy = _load(tiny_policy_dir, cams=cams, camera_map={"top": "front"})
    assert policy.infer(_obs("top")).actions.shape[1] == 6


def test_camera_mismatch_fails_with_both_names(tiny_policy_dir: Path) -> None:
    statuses: list[ModelStatus] = []
    with pytest.raises(PolicyError) as err:
        _load(tiny_policy_dir, statuses, cams={"wrist": CameraSettings()})
    assert "front" in err.value.message and "wrist" in err.value.message
    assert "[model.camera_map]" in err.value.fix
    assert statuses[-1].phase == "failed" and statuses[-1].error


def test_fallback_to_scripted_keeps_reason(tmp_path: Path) -> None:
    statuses: list[ModelStatus] = []
    model = ModelSettings(path=str(tmp_path / "nope"), fallback_to_scripted=True)
    policy = load_policy(model, CAMS, "degrees", statuses.append)
    assert isinstance(policy, ScriptedPolicy)
    assert statuses[-1].phase == "fallback" and "does not exist" in statuses[-1].error and statuses[-1].fix


def test_scripted_mode() -> None:
    statuses: list[ModelStatus] = []
    policy = load_policy(ModelSettings(mode="scripted", actions_per_chunk=30), CAMS, "degrees", statuses.append)
    assert isinstance(policy, ScriptedPolicy) and policy.chunk_length == 30
    assert [s.phase for s in statuses] == ["ready"]


def test_cancel(tiny_policy_dir: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PolicyCancelled):
        load_policy(ModelSettings(path=str(tiny_policy_dir)), CAMS, "degrees", lambda s: None, cancel)


def test_bf16_setting_converts_only_the_vlm(tiny_policy_dir: Path) -> None:
    import torch

    policy = _load(tiny_policy_dir, dtype="bf16")
    assert policy.dtype == "bf16"
    inner = policy.policy.model  # type: ignore[attr-defined]
    assert next(inner.vlm_with_expert.parameters()).dtype == torch.bfloat16
    assert inner.state_proj.weight.dtype == torch.float32
    assert np.all(np.isfinite(policy.infer(_obs()).actions))


def test_demo_policy_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lepetpal_tui.policy.demo_checkpoint import ensure_demo_policy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = ensure_demo_policy()
    assert first == tmp_path / "cache" / "lepetpal" / "demo-smolvla"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_policy() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    cfg = json.loads((first / "config.json").read_text())
    assert cfg["vlm_model_name"] == str(first / "vlm_backbone")
    statuses: list[ModelStatus] = []
    policy = load_policy(dataclasses.replace(ModelSettings(), fallback_to_scripted=False), CAMS, "degrees",
                         statuses.append)
    assert policy.name == "smolvla" and statuses[-1].phase == "ready"
