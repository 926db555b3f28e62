"""Checks a checkpoint must pass before the arm may move.

They read the checkpoint's files directly (config.json, the processor JSON files and their statistics),
so `lepetpal model check` can list every problem even when loading would fail. Each check names both
sides of a mismatch and the setting to change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepetpal_tui.settings import JOINT_NAMES, CameraSettings
from lepetpal_tui.wire import PreflightCheck

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
REQUIRED_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")
# Body-joint statistics beyond this can only be degrees (normalized units stop at ±100).
NORMALIZED_LIMIT = 100.5


@dataclass
class CheckpointInfo:
    """What the checks need from a checkpoint folder, read without torch."""

    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    cameras: tuple[str, ...] = ()
    state_shape: tuple[int, ...] = ()
    action_shape: tuple[int, ...] = ()
    saved_device: str = ""
    # key ("observation.state" / "action") -> stat name -> values
    pre_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    post_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    norm_map: dict[str, str] = field(default_factory=dict)
    problems: list[PreflightCheck] = field(default_factory=list)


def _features(cfg: Mapping[str, Any], section: str) -> dict[str, dict[str, Any]]:
    raw = cfg.get(section) or {}
    return raw if isinstance(raw, dict) else {}


def _load_stats(dir: Path, pipeline_file: str, registry_name: str, info: CheckpointInfo) -> dict[str, Any] | None:
    """Statistics of the (un)normalizer step of one processor pipeline; None when unreadable."""
    from safetensors.numpy import load_file

    path = dir / pipeline_file
    try:
        pipeline = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        info.problems.append(PreflightCheck(
            "statistics", False, f"{pipeline_file} in {dir} cannot be read ({exc}).",
            "Copy the complete checkpoint folder again (or download it again).",
        ))
        return None
    for step in pipeline.get("steps", []):
        if step.get("registry_name") != registry_name:
            continue
        norm_map = step.get("config", {}).get("norm_map", {})
        if isinstance(norm_map, dict):
            info.norm_map.update({str(k): str(v) for k, v in norm_map.items()})
        state_file = step.get("state_file")
        if not state_file:
            return {}
        stats_path = dir / state_file
        if not stats_path.is_file():
            info.problems.append(PreflightCheck(
                "statistics", False,
                f"the statistics file {state_file} named in {pipeline_file} is missing from {dir}: without it "
                "LeRobot would skip normalisation and the policy would output meaningless actions.",
                "Copy the complete checkpoint folder (all policy_*processor*.safetensors files) or download "
                "it again.",
            ))
            return None
        try:
            flat = load_file(str(stats_path))
        except Exception as exc:
            info.problems.append(PreflightCheck(
                "statistics", False, f"the statistics file {state_file} in {dir} is damaged ({exc}).",
                "Copy or download the checkpoint again.",
            ))
            return None
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, value in flat.items():
            feature, _, stat = key.rpartition(".")
            out.setdefault(feature, {})[stat] = np.asarray(value, dtype=np.float64)
        return out
    info.problems.append(PreflightCheck(
        "statistics", False, f"{pipeline_file} in {dir} has no {registry_name} step, so nothing is normalised.",
        "Use a checkpoint saved by LeRobot 0.4+ (policy.save_pretrained and the processors' save_pretrained).",
    ))
    return None


def read_checkpoint(dir: Path) -> CheckpointInfo:
    info = CheckpointInfo(dir=dir)
    missing = [f for f in REQUIRED_FILES if not (dir / f).is_file()]
    if missing:
        # A checkpoint from before LeRobot 0.4 lacks the processor files too, but is converted before
        # preflight runs (policy.legacy_checkpoint); reaching here, its weights had no statistics either.
        older = (" Its model.safetensors holds no normalisation statistics either, so it is not a "
                 "pre-0.4 checkpoint that could be converted." if "policy_preprocessor.json" in missing
                 and "model.safetensors" not in missing else "")
        info.problems.append(PreflightCheck(
            "files", False, f"{dir} lacks {', '.join(missing)}; a LeRobot SmolVLA checkpoint has "
            + ", ".join(REQUIRED_FILES) + " and the statistics files." + older,
            "Point [model] path at the folder that holds config.json (often .../pretrained_model), or "
            "copy the complete checkpoint folder (all policy_*processor* files).",
        ))
    try:
        info.config = json.loads((dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        if "config.json" not in missing:
            info.problems.append(PreflightCheck(
                "files", False, f"config.json in {dir} cannot be read ({exc}).", "Copy or download it again."
            ))
        return info
    cfg = info.config
    info.saved_device = str(cfg.get("device") or "")
    inputs = _features(cfg, "input_features")
    outputs = _features(cfg, "output_features")
    info.cameras = tuple(
        k[len(IMAGE_PREFIX):] for k in inputs if k.startswith(IMAGE_PREFIX)
    )
    info.state_shape = tuple(inputs.get(STATE_KEY, {}).get("shape", ()))
    info.action_shape = tuple(outputs.get(ACTION_KEY, {}).get("shape", ()))
    if (dir / "policy_preprocessor.json").is_file():
        info.pre_stats = _load_stats(dir, "policy_preprocessor.json", "normalizer_processor", info) or {}
    if (dir / "policy_postprocessor.json").is_file():
        info.post_stats = _load_stats(dir, "policy_postprocessor.json", "unnormalizer_processor", info) or {}
    return info


# ----------------------------------------------------------------------------------------------- checks


def check_cameras(
    info: CheckpointInfo, cameras: Mapping[str, CameraSettings], camera_map: Mapping[str, str]
) -> PreflightCheck:
    mapped = {ours: camera_map.get(ours, ours) for ours in cameras}
    wanted = set(info.cameras)
    missing = [c for c in info.cameras if c not in mapped.values()]
    extra = [ours for ours, theirs in mapped.items() if theirs not in wanted]
    shown_ours = ", ".join(f"{o}->{t}" if o != t else o for o, t in mapped.items()) or "(none)"
    detail = f"checkpoint cameras: {', '.join(info.cameras) or '(none)'}; configured: {shown_ours}"
    if not info.cameras:
        return PreflightCheck("cameras", False, "the checkpoint declares no observation.images.* feature.",
                              "Use a SmolVLA checkpoint trained with at least one camera.")
    if missing:
        fix_parts = []
        for ck, ours in zip(missing, extra, strict=False):
            fix_parts.append(f'add {ours} = "{ck}" under [model.camera_map], or rename [cameras.{ours}] to '
                             f"[cameras.{ck}]")
        if len(missing) > len(extra):
            fix_parts.append("add a [cameras.<name>] table for " + ", ".join(missing[len(extra):]))
        return PreflightCheck(
            "cameras", False,
            f"{detail}. Missing: {', '.join(missing)} (LeRobot would silently drop them).",
            "; ".join(fix_parts) + ".",
        )
    note = f" (not used by the checkpoint: {', '.join(extra)})" if extra else ""
    return PreflightCheck("cameras", True, detail + note)


def check_sizes(info: CheckpointInfo) -> list[PreflightCheck]:
    out = []
    n = len(JOINT_NAMES)
    for name, shape, key in (("state size", info.state_shape, STATE_KEY), ("action size", info.action_shape,
                                                                           ACTION_KEY)):
        ok = tuple(shape) == (n,)
        detail = f"{key} has shape {list(shape) or 'missing'}; the SO-101 has {n} joints"
        fix = "" if ok else "Use a checkpoint trained on an SO-100/SO-101 arm (6 joints: 5 body + gripper)."
        out.append(PreflightCheck(name, ok, detail, fix))
    return out


def check_statistics(info: CheckpointInfo) -> PreflightCheck:
    failures = [p for p in info.problems if p.name == "statistics"]
    if failures:
        return failures[0]
    need = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99")}
    problems = []
    for key, group, stats in ((STATE_KEY, "STATE", info.pre_stats), (ACTION_KEY, "ACTION", info.post_stats)):
        mode = info.norm_map.get(group, "MEAN_STD")
        if mode == "IDENTITY":
            continue
        have = stats.get(key, {})
        absent = [s for s in need.get(mode, ("mean", "std")) if s not in have]
        if absent:
            problems.append(f"{key} lacks {'/'.join(absent)} ({mode} normalisation)")
            continue
        if any(not np.all(np.isfinite(v)) for v in have.values()):
            problems.append(f"{key} statistics contain NaN or infinity")
        elif "std" in have and np.any(have["std"] <= 0):
            problems.append(f"{key} has a zero standard deviation")
    if problems:
        return PreflightCheck(
            "statistics", False,
            "; ".join(problems) + ": normalisation would be skipped or broken.",
            "Re-export the checkpoint with its dataset statistics (processors' save_pretrained).",
        )
    return PreflightCheck("statistics", True, "state and action statistics present")


def infer_units(info: CheckpointInfo) -> str:
    """"degrees", or "unknown" when every body-joint statistic fits within ±100 (both units possible)."""
    peak = 0.0
    for key, stats in ((STATE_KEY, info.pre_stats), (ACTION_KEY, info.post_stats)):
        have = stats.get(key, {})
        for s in ("min", "max", "q01", "q99"):
            if s in have and have[s].size >= 5:
                peak = max(peak, float(np.max(np.abs(have[s][:5]))))
        if "mean" in have and have["mean"].size >= 5 and not any(s in have for s in ("min", "max")):
            peak = max(peak, float(np.max(np.abs(have["mean"][:5]))))
    return "degrees" if peak > NORMALIZED_LIMIT else "unknown"


def check_units(info: CheckpointInfo, arm_units: str) -> PreflightCheck:
    inferred = infer_units(info)
    if inferred == "degrees" and arm_units != "degrees":
        return PreflightCheck(
            "units", False,
            f'checkpoint statistics go beyond ±100 on the body joints, so it was trained in degrees; the arm '
            f'is set to "{arm_units}"',
            'Set [arm] units = "degrees" (the checkpoint\'s units) in lepetpal.toml.',
        )
    if inferred == "degrees":
        return PreflightCheck("units", True, "checkpoint in degrees, arm in degrees")
    return PreflightCheck(
        "units", True,
        f'statistics fit within ±100, consistent with the arm\'s "{arm_units}" (cannot tell degrees from '
        "normalized from them alone)",
    )


def check_device(info: CheckpointInfo, requested: str, resolved: str, available: Mapping[str, bool]) -> PreflightCheck:
    if requested in ("cuda", "mps") and not available.get(requested, False):
        return PreflightCheck(
            "device", False, f'[model] device = "{requested}" but torch sees no {requested.upper()} device',
            'Set [model] device = "auto" (or "cpu"), or pass --device auto.',
        )
    note = ""
    if info.saved_device and info.saved_device.split(":")[0] != resolved:
        note = f" (checkpoint was saved for {info.saved_device}; loading on {resolved} instead)"
    return PreflightCheck("device", True, f"running on {resolved}{note}")


def run_preflight(
    dir: Path,
    *,
    cameras: Mapping[str, CameraSettings],
    camera_map: Mapping[str, str],
    arm_units: str,
    requested_device: str,
    resolved_device: str,
    available_devices: Mapping[str, bool],
    info: CheckpointInfo | None = None,
) -> list[PreflightCheck]:
    info = info or read_checkpoint(dir)
    checks = [p for p in info.problems if p.name == "files"]
    if any(not c.ok for c in checks) and not info.config:
        return checks
    checks.append(check_cameras(info, cameras, camera_map))
    checks.extend(check_sizes(info))
    checks.append(check_statistics(info))
    checks.append(check_units(info, arm_units))
    checks.append(check_device(info, requested_device, resolved_device, available_devices))
    return checks


def failures(checks: list[PreflightCheck]) -> list[PreflightCheck]:
    return [c for c in checks if not c.ok]
