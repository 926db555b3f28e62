"""SmolVLA through LeRobot: load a local checkpoint folder and compute action chunks.

Imports torch and lerobot; `policy.py` imports this module only when a SmolVLA policy is loaded.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lepetpal_tui.policy.errors import PolicyError
from lepetpal_tui.policy.speed import accuracy_cache, kernel_probe
from lepetpal_tui.policy.speed import apply as policy_speed
from lepetpal_tui.policy.speed.cpu_caps import CpuCaps, cpu_caps
from lepetpal_tui.policy.speed.int8_linear import int8_supported
from lepetpal_tui.settings import JOINT_NAMES, ModelSettings
from lepetpal_tui.wire import ActionChunk, InferenceTiming, Observation

IMAGE_PREFIX = "observation.images."
# Below this size int8/bf16 cannot pay for themselves on a CPU: small matmuls are bound by overhead.
BF16_MIN_PARAMETERS = 5_000_000
# int8/bf16 are kept only when their chunk stays within this many robot units (degrees) of fp32's with
# the same noise (max abs difference over all joints and chunk steps).
ACTION_TOLERANCE = 3.0
BF16_TOLERANCE = ACTION_TOLERANCE  # the older name


def available_devices() -> dict[str, bool]:
    mps = getattr(torch.backends, "mps", None)
    return {
        "cpu": True,
        "cuda": bool(torch.cuda.is_available()),
        "mps": bool(mps is not None and mps.is_available()),
    }


def resolve_device(setting: str) -> str:
    """"auto" -> cuda, then mps, then cpu; an explicit device is returned as is (preflight checks it)."""
    if setting != "auto":
        return setting
    avail = available_devices()
    return "cuda" if avail["cuda"] else "mps" if avail["mps"] else "cpu"


class SmolVLARunner:
    """A loaded SmolVLA policy with its processors; implements the ChunkPolicy protocol."""

    name = "smolvla"

    def __init__(
        self,
        *,
        source: str,
        policy: Any,
        pre: Any,
        post: Any,
        device: str,
        camera_map: Mapping[str, str],
        chunk_length: int,
    ) -> None:
        self.source = source
        self.policy = policy
        self.pre = pre
        self.post = post
        self.device = device
        self.dtype = "fp32"
        self.camera_map = dict(camera_map)
        self.chunk_length = chunk_length
        self.flow_steps_note = str(policy.config.num_steps)  # how many, and whose choice (load_local)
        self.parameters = int(sum(p.numel() for p in policy.parameters()))
        self.image_keys: tuple[str, ...] = tuple(k for k in policy.config.image_features if k.startswith(IMAGE_PREFIX))
        self.cameras = tuple(k[len(IMAGE_PREFIX):] for k in self.image_keys)

    # --------------------------------------------------------------------------------------- inference

    def _batch(self, obs: Observation) -> dict[str, Any]:
        joints = np.asarray(obs.joints, dtype=np.float32).reshape(-1)
        if joints.shape != (len(JOINT_NAMES),):
            raise PolicyError(f"observation has {joints.shape[0]} joints, the policy needs {len(JOINT_NAMES)}.")
        batch: dict[str, Any] = {"observation.state": torch.from_numpy(joints.copy()), "task": obs.task}
        for ours, frame in obs.images.items():
            key = IMAGE_PREFIX + self.camera_map.get(ours, ours)
            if key not in self.image_keys:
                continue
            img = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
            batch[key] = img.to(torch.float32).div_(255.0)
        missing = [k[len(IMAGE_PREFIX):] for k in self.image_keys if k not in batch]
        if missing:
            raise PolicyError(
                f"no frame for the checkpoint camera(s) {', '.join(missing)}; frames came from "
                f"{', '.join(obs.images) or 'no camera'}.",
                "Map our camera names with [model.camera_map] (ours = \"theirs\").",
            )
        return batch

    def raw_chunk(self, obs: Observation, noise: torch.Tensor | None = None) -> tuple[np.ndarray, InferenceTiming]:
        t0 = time.perf_counter()
        batch = self.pre(self._batch(obs))
        t1 = time.perf_counter()
        with torch.inference_mode():
            actions = self.policy.predict_action_chunk(batch, noise=noise)
        if self.device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        actions = self.post(actions[:, : self.chunk_length])
        out = actions[0].to(torch.float64).cpu().numpy()
        t3 = time.perf_counter()
        return out, InferenceTiming(preprocess_s=t1 - t0, model_s=t2 - t1, postprocess_s=t3 - t2)

    def infer(self, obs: Observation) -> ActionChunk:
        actions, timing = self.raw_chunk(obs)
        return ActionChunk(actions=actions, timing=timing, task=obs.task, observed_at=obs.timestamp)

    def reset(self) -> None:
        self.policy.reset()

    def make_noise(self, seed: int = 0) -> torch.Tensor:
        cfg = self.policy.config
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, cfg.chunk_size, cfg.max_action_dim), generator=gen, dtype=torch.float32)
        return noise.to(self.device)

    # ------------------------------------------------------------------------------------------ dtype

    def to_bf16(self) -> None:
        """bf16 for the VLM + action expert only; the projections stay fp32 (whole-policy bf16 breaks)."""
        policy_speed.to_bf16(self.policy)
        self.dtype = "bf16"

    def to_int8(self) -> None:
        """int8 linears (dynamic quantization) in the VLM + action expert; CPU only."""
        policy_speed.to_int8(self.policy)
        self.dtype = "int8"


def warmup_observation(cameras: Sequence[str], task: str = "warm up") -> Observation:
    """A synthetic observation with one frame per configured camera (our names)."""
    from lepetpal_tui.arm.camera import SyntheticCamera

    images = {name: SyntheticCamera(name, 640, 480).frame_at(0) for name in cameras}
    return Observation(joints=np.zeros(len(JOINT_NAMES)), images=images, task=task, timestamp=0.0)


# Parameters a checkpoint may leave out: the VLM's lm_head (tied to the embeddings, never called by SmolVLA).
_MAY_BE_ABSENT = ("lm_head",)


def _from_pretrained_without_random_init(policy_cls: Any, dir: Path, cfg: Any) -> Any:
    """`policy_cls.from_pretrained` without first filling 450 M parameters with random numbers.

    LeRobot builds the model (transformers' `from_config`: every layer initialised at random) and then
    overwrites every weight from model.safetensors; on a 2-core CPU the random init is most of the
    load time. transformers' own `no_init_weights` skips it. Safe only if the file really sets every
    parameter: checked against its keys; if any is missing, load again the ordinary way.
    """
    from safetensors import safe_open
    from transformers.initialization import no_init_weights

    file = dir / "model.safetensors"
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
    except Exception:  # a damaged file: the ordinary load reports it
        return policy_cls.from_pretrained(str(dir), config=cfg)
    with no_init_weights():
        policy = policy_cls.from_pretrained(str(dir), config=cfg)
    missing = [name for name, _ in policy.named_parameters()
               if name not in keys and not any(part in _MAY_BE_ABSENT for part in name.split("."))]
    if missing:
        return policy_cls.from_pretrained(str(dir), config=cfg)
    return policy


def _refuse_other_policy_types(dir: Path) -> None:
    """PolicyError for a config.json whose "type" is another policy, read before LeRobot decodes it: its
    decoder would otherwise list every field the other policy's class lacks, not the real problem."""
    import json

    try:
        kind = json.loads((dir / "config.json").read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: LeRobot's own decoding says so below
    if isinstance(kind, str) and kind != "smolvla":
        raise PolicyError(
            f"{dir} holds a {kind} policy, not SmolVLA.",
            "Use a SmolVLA checkpoint (config.json \"type\": \"smolvla\"), or set [model] mode = \"scripted\".",
        )


def load_local(
    dir: Path,
    *,
    model: ModelSettings,
    device: str,
    backbone: str,
    chunk_length_hint: int | None = None,
) -> SmolVLARunner:
    """Load policy and processors from `dir` on `device`, with the backbone at `backbone` (local dir)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    _refuse_other_policy_types(dir)
    try:
        cfg = PreTrainedConfig.from_pretrained(str(dir))
    except Exception as exc:
        raise PolicyError(
            f"config.json in {dir} is not a LeRobot policy config ({type(exc).__name__}: {exc}).",
            "Point [model] path at a LeRobot SmolVLA checkpoint folder (config.json, model.safetensors, ...).",
        ) from exc
    if getattr(cfg, "type", "") != "smolvla":
        raise PolicyError(
            f"{dir} holds a {getattr(cfg, 'type', '?')} policy, not SmolVLA.",
            "Use a SmolVLA checkpoint (config.json \"type\": \"smolvla\"), or set [model] mode = \"scripted\".",
        )
    saved_steps = int(cfg.num_steps)
    cfg.device = device
    cfg.vlm_model_name = backbone
    cfg.load_vlm_weights = False  # the checkpoint's weights are loaded on top
    if model.flow_steps:  # else the checkpoint's own num_steps, as trained
        cfg.num_steps = int(model.flow_steps)
    n = min(int(model.actions_per_chunk), int(cfg.chunk_size))
    cfg.n_action_steps = n
    try:
        # LeRobot prints progress to stdout, which would scribble over a full-screen UI.
        with contextlib.redirect_stdout(io.StringIO()):
            policy = _from_pretrained_without_random_init(SmolVLAPolicy, dir, cfg)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if "safetensor" in text.lower() or "header" in text.lower() or "deserializ" in text.lower():
            raise PolicyError(
                f"model.safetensors in {dir} is damaged or incomplete ({text}).",
                "Copy or download the checkpoint again (for a hub model delete its folder under the "
                "Hugging Face cache first).",
            ) from exc
        raise PolicyError(
            f"LeRobot could not build the SmolVLA policy from {dir} ({text}).",
            "Check that the checkpoint matches LeRobot 0.6.1 and that its VLM backbone files are complete.",
        ) from exc
    policy.to(device)
    policy.eval()
    try:
        pre, post = make_pre_post_processors(
            cfg,
            pretrained_path=str(dir),
            # A checkpoint saved on CUDA must load on CPU; the tokenizer lives with the backbone.
            preprocessor_overrides={
                "device_processor": {"device": device},
                "tokenizer_processor": {"tokenizer_name": backbone},
            },
            postprocessor_overrides={"device_processor": {"device": "cpu"}},
        )
    except Exception as exc:
        raise PolicyError(
            f"the processor files in {dir} cannot be loaded ({type(exc).__name__}: {exc}).",
            "Copy or download the complete checkpoint again (policy_*processor*.json and .safetensors).",
        ) from exc
    runner = SmolVLARunner(
        source=str(dir), policy=policy, pre=pre, post=post, device=device,
        camera_map=model.camera_map, chunk_length=n,
    )
    runner.flow_steps_note = (f"{cfg.num_steps} ([model] flow_steps; the checkpoint says {saved_steps})"
                              if model.flow_steps else f"{cfg.num_steps} (the checkpoint's own)")
    return runner


def _compare(
    runner: SmolVLARunner, obs: Observation, noise: torch.Tensor, ref: np.ndarray, t_ref: float
) -> tuple[float, float, float]:
    """(max abs diff vs ref, speed-up vs t_ref, chunk seconds) of the runner's current dtype."""
    got, timing = runner.raw_chunk(obs, noise=noise)
    return float(np.max(np.abs(got - ref))), t_ref / max(timing.total_s, 1e-9), timing.total_s


def fast_path(setting: str, device: str, parameters: int, caps: CpuCaps) -> tuple[str | None, str]:
    """The one fast path worth trying for this setting, device and CPU (None: fp32), and why.

    Decided from the CPU's capabilities, instantly: int8 where a quantized engine exists (7-bit
    activations without VNNI), bf16 only with bf16 dot products in hardware (emulated bf16 runs at 17
    GFLOP/s against fp32's 130 on the AVX2-only EPYC), fp32 for models too small to gain.
    """
    if setting == "fp32":
        return None, "fp32 (as set)"
    if device == "mps":
        return None, "fp32 (bf16/int8 are not used on mps)"
    if device == "cuda":
        return "bf16", "bf16 on CUDA"
    if setting == "int8":
        if int8_supported():
            return "int8", "int8 (as set)"
        return None, "fp32 (int8 needs a quantized engine whose kernel is sound on this CPU)"
    if setting == "bf16":
        if caps.bf16_native:
            return "bf16", "bf16 (as set)"
        return "bf16", "bf16 (as set; this CPU has no bf16 dot products: expect it slower than fp32)"
    if parameters < BF16_MIN_PARAMETERS:
        return None, f"fp32 (model too small for int8/bf16 to help: {parameters:,} parameters)"
    if int8_supported():
        return "int8", f"int8 for {caps.kind}"
    if caps.bf16_native:
        return "bf16", f"bf16 for {caps.kind}"
    return None, f"fp32 (no int8 engine and no native bf16 on {caps.kind})"


def _path_label(name: str) -> str:
    return f"int8 ({policy_speed.int8_activation_bits()} activations)" if name == "int8" else name


def _diff_text(diff: float, tolerance: float) -> str:
    """The accuracy check's result in words: the largest action difference to fp32's, in the
    checkpoint's action units (degrees for an SO-101 checkpoint in degrees), and the limit."""
    return f"max diff to fp32's actions {diff:.2f} (limit {tolerance:g})"


def _timed_kernels() -> str:
    """The kernels chosen by timing them at the first chunk (policy/speed/kernel_probe.py), for the note."""
    return "".join(f"; {name} {choice}" for name, choice in kernel_probe.decisions().items())


def _versions() -> str:
    import lerobot

    from lepetpal_tui import __version__

    return f"torch {torch.__version__}, lerobot {getattr(lerobot, '__version__', '?')}, lepetpal {__version__}"


def choose_dtype(
    runner: SmolVLARunner, setting: str, obs: Observation, reload: Any,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[SmolVLARunner, str, float]:
    """Apply the dtype setting; returns (runner, note, first-inference seconds).

    `fast_path` names the one path to use from the CPU's capabilities. On a CPU it must pass the
    accuracy check first (same noise, max abs difference to fp32 within ACTION_TOLERANCE degrees), for
    "auto" and for an explicit int8/bf16 alike: a path whose kernels are off falls back to fp32 with the
    reason (fail closed). The check's result is cached per checkpoint + CPU kind + path
    (policy/speed/accuracy_cache.py), so it runs on the first start only. `reload()` gives a fresh fp32 runner
    (int8 and bf16 convert in place). `progress` hears each step as it starts.
    """
    caps = cpu_caps()
    name, why = fast_path(setting, runner.device, runner.parameters, caps)
    if caps.capped_by and runner.device == "cpu":  # someone keeps the kernels below this CPU: say so
        why += f", kernels capped by {caps.capped_by}"
    steps: list[str] = []

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        progress(label)
        t0 = time.perf_counter()
        out = fn()
        steps.append(f"{label} {time.perf_counter() - t0:.1f} s")
        return out

    def warm() -> float:
        _, timing = timed("first inference", lambda: runner.raw_chunk(obs))
        return float(timing.total_s)

    if name is None:
        return runner, why, warm()
    convert = SmolVLARunner.to_int8 if name == "int8" else SmolVLARunner.to_bf16
    if runner.device != "cpu":  # CUDA bf16: no CPU kernels to distrust
        timed(f"converting to {name}", lambda: convert(runner))
        seconds = warm()
        return runner, f"{name} VLM ({why}; {', '.join(steps)})", seconds
    label = _path_label(name)
    # The int8 engines are part of the path: the same label on AMX packs the expert with oneDNN, not fbgemm.
    kernels = f"{label}; {policy_speed.int8_engines()}" if name == "int8" else label
    key = accuracy_cache.cache_key(accuracy_cache.checkpoint_fingerprint(Path(runner.source)), caps.kind, kernels,
                                   int(runner.policy.config.num_steps), _versions())
    cached = accuracy_cache.lookup(key)
    if cached is not None and not cached.accepted:
        seconds = warm()
        return runner, (f"fp32 ({label} rejected on {caps.kind}: {_diff_text(cached.max_diff, cached.tolerance)}, "
                        f"checked {cached.checked_at}; {', '.join(steps)})"), seconds
    if cached is not None:
        try:
            timed(f"converting to {label}", lambda: convert(runner))
            seconds = warm()
        except Exception as exc:  # e.g. a quantized engine that lacks per-channel int8
            runner = reload()
            return runner, f"fp32 ({label} failed: {type(exc).__name__}: {exc})", warm()
        return runner, (f"{label} VLM ({why}; accuracy checked {cached.checked_at}: "
                        f"{_diff_text(cached.max_diff, cached.tolerance)}{_timed_kernels()}; {', '.join(steps)})"), seconds
    noise = runner.make_noise()
    ref, t32 = timed("fp32 reference chunk (accuracy check, once per checkpoint and CPU)",
                     lambda: runner.raw_chunk(obs, noise=noise))
    try:
        timed(f"converting to {label}", lambda: convert(runner))
        diff, speedup, seconds = timed(f"{label} chunk", lambda: _compare(runner, obs, noise, ref, t32.total_s))
    except Exception as exc:  # a kernel that cannot run here: fp32, and say why
        runner = reload()
        return runner, f"fp32 ({label} failed: {type(exc).__name__}: {exc})", warm()
    result = accuracy_cache.AccuracyResult(path=label, max_diff=diff, tolerance=ACTION_TOLERANCE,
                                           speedup=speedup, checked_at=accuracy_cache.today())
    where = accuracy_cache.store(key, result)
    kept = f"; result kept in {where}" if where else ""
    if result.accepted:
        return runner, (f"{label} VLM ({why}; {speedup:.1f}x faster than fp32, {_diff_text(diff, ACTION_TOLERANCE)}{kept}"
                        f"{_timed_kernels()}; {', '.join(steps)})"), seconds
    runner = reload()
    seconds = warm()
    return runner, (f"fp32 ({label} rejected on {caps.kind}: {_diff_text(diff, ACTION_TOLERANCE)}{kept}; "
                    f"{', '.join(steps)})"), seconds
