"""Checkpoints saved by LeRobot before 0.4: convert them once with LeRobot's own migration code.

Before 0.4 a policy kept its normalisation statistics inside its weights (`normalize_inputs.buffer_*`,
`unnormalize_outputs.buffer_*`, ...) and there were no `policy_*processor*` files. LeRobot 0.6.1 loads
only the new layout; it ships the conversion (`lerobot/processor/migrate_policy_normalization.py`),
whose steps we run here on a copy in our cache. The original folder is never written to.

Detection reads only file names and the safetensors header (no torch), so preflight and `model check`
can say what they found before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from lepetpal_tui.policy.errors import PolicyError

# Weight-name prefixes of the pre-0.4 normalisation buffers (LeRobot's migration extracts these).
LEGACY_STAT_PREFIXES = ("normalize_inputs.buffer_", "unnormalize_outputs.buffer_", "normalize_targets.buffer_")
MARKER = "lepetpal_converted.json"  # written last: a folder without it is half-converted and redone
CONVERSION_VERSION = 1


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names in a safetensors file, from its JSON header (8-byte little-endian length first)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > 100_000_000:
            raise ValueError(f"{path} has an implausible header size ({n} bytes)")
        header = json.loads(fh.read(n))
    return [k for k in header if k != "__metadata__"]


def is_legacy_checkpoint(dir: Path) -> bool:
    """config.json + model.safetensors with the statistics in the weights and no processor files."""
    weights = dir / "model.safetensors"
    if not (dir / "config.json").is_file() or not weights.is_file() or (dir / "policy_preprocessor.json").exists():
        return False
    try:
        return any(k.startswith(LEGACY_STAT_PREFIXES) for k in safetensors_keys(weights))
    except (OSError, ValueError):
        return False  # a damaged file: the usual checks say so


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lepetpal" / "converted"


def converted_dir(dir: Path) -> Path:
    """Where the conversion of `dir` lives: one folder per original path and weights file version."""
    weights = (dir / "model.safetensors").stat()
    key = f"{dir.resolve()}|{weights.st_size}|{weights.st_mtime_ns}|{CONVERSION_VERSION}"
    return cache_root() / f"{dir.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def is_converted(out: Path) -> bool:
    return (out / MARKER).is_file()


def convert(dir: Path, backbone: str, out: Path | None = None) -> Path:
    """Convert the pre-0.4 checkpoint in `dir` into `out` (default: our cache) once; returns the folder.

    The steps of LeRobot's `migrate_policy_normalization.main()`, minus its hub download and upload:
    extract the statistics from the weights, drop the normalisation layers, rebuild the policy and its
    processors with the factories, save. `backbone` is a local folder with the VLM's config and tokenizer
    (building SmolVLA needs them; its weights come from the checkpoint)."""
    out = out or converted_dir(dir)
    if is_converted(out):
        return out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # the migration prints a lot; keep it beside the result
            _migrate(dir, backbone, tmp)
    except PolicyError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PolicyError(
            f"{dir} looks like a checkpoint saved before LeRobot 0.4 (statistics inside model.safetensors), "
            f"but LeRobot's migration could not convert it ({type(exc).__name__}: {exc}).",
            "Convert it by hand with `python -m lerobot.processor.migrate_policy_normalization "
            f"--pretrained-path {dir} --output-dir <new folder>` and point [model] path at the new folder.",
        ) from exc
    (tmp / "migration.log").write_text(log.getvalue())
    (tmp / MARKER).write_text(json.dumps({"source": str(dir.resolve()), "version": CONVERSION_VERSION}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _migrate(dir: Path, backbone: str, out: Path) -> None:
    import torch
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors
    from lerobot.processor import migrate_policy_normalization as mig
    from safetensors.torch import load_file

    config: dict[str, Any] = json.loads((dir / "config.json").read_text())
    policy_type = config.get("type")
    if policy_type != "smolvla":
        raise PolicyError(
            f"{dir} holds a {policy_type or 'policy without a type'} checkpoint, not SmolVLA.",
            "Use a SmolVLA checkpoint (config.json \"type\": \"smolvla\"), or set [model] mode = \"scripted\".",
        )
    state_dict = load_file(str(dir / "model.safetensors"))
    stats = mig.extract_normalization_stats(state_dict)
    _, norm_map = mig.detect_features_and_norm_modes(config, stats)
    clean = mig.clean_state_dict(mig.remove_normalization_layers(state_dict), remove_str="._orig_mod")

    cfg = {k: v for k, v in config.items() if k not in ("normalization_mapping", "type")}
    for key in ("input_features", "output_features"):
        if key in cfg:
            cfg[key] = mig.convert_features_to_policy_features(cfg[key])
    cfg["normalization_mapping"] = norm_map
    # Build on this computer from the local backbone, without the VLM's own weights (the checkpoint's
    # replace them); fields that LeRobot 0.6.1 no longer knows are dropped.
    known = {f.name for f in dataclasses.fields(type(make_policy_config("smolvla")))}
    cfg = {k: v for k, v in cfg.items() if k in known}
    cfg.update(device="cpu", vlm_model_name=backbone, load_vlm_weights=False)
    policy_config = make_policy_config("smolvla", **cfg)
    policy = get_policy_class("smolvla")(policy_config)
    missing = mig.load_state_dict_with_missing_key_handling(policy, clean, "smolvla", {})
    # A tied weight (embed_tokens shares the lm_head tensor) is saved once: loaded through its twin.
    params = policy.state_dict()
    loaded = {params[k].data_ptr() for k in clean if k in params}
    missing = [k for k in missing if params[k].data_ptr() not in loaded]
    if missing:
        raise PolicyError(
            f"converting the pre-0.4 checkpoint in {dir}: its weights lack {len(missing)} tensors the policy "
            f"needs (first: {missing[0]}).",
            "The checkpoint is incomplete or not a SmolVLA; download or copy it again.",
        )
    policy.to(torch.float32)
    pre, post = make_pre_post_processors(policy_cfg=policy_config, dataset_stats=stats)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    policy.save_pretrained(out)
    # The converted folder names the same backbone as the original (not this computer's copy of it).
    saved = json.loads((out / "config.json").read_text())
    saved["vlm_model_name"] = config.get("vlm_model_name", backbone)
    (out / "config.json").write_text(json.dumps(saved, indent=4) + "\n")
    from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME

    if (dir / BACKBONE_DIRNAME).is_dir():  # a backbone shipped inside the checkpoint travels with it
        shutil.copytree(dir / BACKBONE_DIRNAME, out / BACKBONE_DIRNAME)
