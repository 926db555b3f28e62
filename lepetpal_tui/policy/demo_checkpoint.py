"""Tiny SmolVLA checkpoints built fully offline, in LeRobot's real checkpoint format.

Used by the tests, `lepetpal make-test-policy` and `lepetpal --sim` (the demo policy). The checkpoint is
self-contained: the tiny SmolVLM backbone (config, image processor, a tokenizer trained here) is stored in
`<dir>/vlm_backbone`, and `load_policy` points LeRobot at it wherever the folder has been copied to.

Heavy imports (torch, transformers, lerobot) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lepetpal_tui.settings import JOINT_NAMES, ArmSettings

BACKBONE_DIRNAME = "vlm_backbone"
# Marker written last: a folder without it is a half-built checkpoint and gets rebuilt.
BUILD_MARKER = "lepetpal_test_policy.json"
DEMO_POLICY_VERSION = 1

# Tiny backbone dimensions: about 0.4 M parameters, loads in well under a second.
_IMAGE_SIZE = 32  # the policy pads/resizes every camera frame to this square
_PATCH = 8
_SCALE_FACTOR = 2  # (32/8)^2 = 16 patches -> 4 image tokens per camera
_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
_VISION = {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 2}
_SPECIAL = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
_CORPUS = [
    "pick up the cube and throw it",
    "grab the red ball and put it in the box",
    "move the block to the left",
    "wave hello",
    "place the toy in the bowl and go home",
]


def _build_backbone(out: Path) -> None:
    """Write a tiny SmolVLM config, image/video processors and a locally trained tokenizer to `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
    )
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    specials = ["<|endoftext|>", "<pad>", *_SPECIAL.values()]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token=_SPECIAL["end_of_utterance_token"],
        unk_token="<|endoftext|>",
        pad_token="<pad>",
        extra_special_tokens=dict(_SPECIAL),
    )
    size = {"longest_edge": _IMAGE_SIZE}
    image_proc = SmolVLMImageProcessor(do_resize=True, size=size, max_image_size=size, do_image_splitting=False)
    video_proc = SmolVLMVideoProcessor(size=size, max_image_size=size)
    seq_len = ((_IMAGE_SIZE // _PATCH) ** 2) // (_SCALE_FACTOR**2)
    SmolVLMProcessor(
        image_processor=image_proc, tokenizer=fast, video_processor=video_proc, image_seq_len=seq_len
    ).save_pretrained(out)
    vocab = tok.get_vocab_size()
    kwargs: dict[str, Any] = dict(
        image_token_id=fast.convert_tokens_to_ids(_SPECIAL["image_token"]),
        scale_factor=_SCALE_FACTOR,
        vocab_size=vocab,
        tie_word_embeddings=True,
        text_config={
            "model_type": "llama",
            "vocab_size": vocab,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": 512,
            "pad_token_id": fast.pad_token_id,
            "tie_word_embeddings": True,
            **_TEXT,
        },
        vision_config={"image_size": _IMAGE_SIZE, "patch_size": _PATCH, "layer_norm_eps": 1e-6, **_VISION},
    )
    SmolVLMConfig(**kwargs).save_pretrained(out)


def _stats(*, action_std: float) -> dict[str, dict[str, Any]]:
    """Statistics in degrees (gripper 0..100), spanning the default joint limits so units can be inferred."""
    import torch

    limits = ArmSettings().limits
    lo = torch.tensor([limits[j][0] for j in JOINT_NAMES], dtype=torch.float32)
    hi = torch.tensor([limits[j][1] for j in JOINT_NAMES], dtype=torch.float32)
    mean = torch.zeros(6)
    mean[-1] = 30.0  # gripper mostly open-ish
    state = {"mean": mean, "std": torch.full((6,), 40.0), "min": lo, "max": hi}
    # A small action spread keeps the random-weight demo's motion gentle around the mean pose.
    action = {"mean": mean.clone(), "std": torch.full((6,), action_std), "min": lo, "max": hi}
    return {"observation.state": state, "action": action}


def build_test_policy(
    dir: Path,
    *,
    camera_names: Sequence[str] = ("front",),
    seed: int = 0,
    action_std: float = 5.0,
) -> Path:
    """Build a tiny SmolVLA checkpoint (random weights, seeded) in `dir` and return `dir`.

    `dir` ends up holding config.json, model.safetensors, policy_{pre,post}processor.json with their
    statistics files, and the backbone in `vlm_backbone/`.
    """
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    if not camera_names:
        raise ValueError("a test policy needs at least one camera name")
    dir = Path(dir).expanduser().resolve()
    dir.mkdir(parents=True, exist_ok=True)
    backbone = dir / BACKBONE_DIRNAME
    if backbone.exists():
        shutil.rmtree(backbone)
    backbone.mkdir()
    _build_backbone(backbone)

    inputs = {
        f"observation.images.{name}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 480, 640))
        for name in camera_names
    }
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(len(JOINT_NAMES),))
    cfg = SmolVLAConfig(
        # Absolute path so plain LeRobot can load it in place; load_policy re-points it after a copy.
        vlm_model_name=str(backbone),
        load_vlm_weights=False,
        num_vlm_layers=_TEXT["num_hidden_layers"],
        resize_imgs_with_padding=(_IMAGE_SIZE, _IMAGE_SIZE),
        max_state_dim=8,
        max_action_dim=8,
        device="cpu",
        push_to_hub=False,
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(len(JOINT_NAMES),))},
    )
    rng_state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):  # LeRobot prints while building
            policy = SmolVLAPolicy(cfg)
    finally:
        torch.set_rng_state(rng_state)
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats(action_std=action_std))  # type: ignore[arg-type]
    policy.save_pretrained(dir)
    pre.save_pretrained(dir)
    post.save_pretrained(dir)
    info = {
        "version": DEMO_POLICY_VERSION,
        "cameras": list(camera_names),
        "seed": seed,
        "parameters": sum(p.numel() for p in policy.parameters()),
    }
    (dir / BUILD_MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return dir


def demo_policy_dir() -> Path:
    """Where the demo checkpoint lives: $XDG_CACHE_HOME/lepetpal/demo-smolvla (default ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lepetpal" / "demo-smolvla"


def _is_current(dir: Path) -> bool:
    try:
        info = json.loads((dir / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("version") == DEMO_POLICY_VERSION and (dir / "model.safetensors").is_file())


def ensure_demo_policy() -> Path:
    """Build the demo checkpoint once into the cache and reuse it afterwards."""
    target = demo_policy_dir()
    if _is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash or a concurrent build never leaves a half folder.
    tmp = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=target.parent))
    try:
        build_test_policy(tmp / "policy")
        if _is_current(target):  # another process won the race
            return target
        if target.exists():
            shutil.rmtree(target)
        (tmp / "policy").rename(target)
        # The config names the backbone by absolute path; point it at the final location.
        _repoint_backbone(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _repoint_backbone(dir: Path) -> None:
    backbone = str(dir / BACKBONE_DIRNAME)
    cfg_path = dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["vlm_model_name"] = backbone
    cfg_path.write_text(json.dumps(cfg, indent=4) + "\n")
    pre_path = dir / "policy_preprocessor.json"
    pre = json.loads(pre_path.read_text())
    for step in pre.get("steps", []):
        if step.get("registry_name") == "tokenizer_processor":
            step.setdefault("config", {})["tokenizer_name"] = backbone
    pre_path.write_text(json.dumps(pre, indent=2) + "\n")
