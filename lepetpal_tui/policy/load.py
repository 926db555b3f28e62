"""Policy loading: hub repo or local folder -> a ready ChunkPolicy, with progress and clear failures.

`load_policy` reports every phase through `on_status` (resolving, downloading, loading, warming_up,
ready, failed, fallback). Preflight checks run before the weights are loaded; any failure stops the load
(or falls back to the scripted policy when `model.fallback_to_scripted`). torch and lerobot are imported
lazily, so importing this module is cheap.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from lepetpal_tui.policy.errors import PolicyCancelled, PolicyError
from lepetpal_tui.policy.hub import download_snapshot, looks_like_repo_id
from lepetpal_tui.policy.scripted import ScriptedPolicy
from lepetpal_tui.settings import CameraSettings, ModelSettings
from lepetpal_tui.wire import ActionChunk, ModelStatus, Observation, PreflightCheck

__all__ = [
    "BACKBONE_FILE_PATTERNS",
    "ChunkPolicy",
    "PolicyCancelled",
    "PolicyError",
    "load_policy",
]

StatusFn = Callable[[ModelStatus], None]
# Only what building the model needs from a hub VLM backbone (no weights: the checkpoint has them).
BACKBONE_FILE_PATTERNS = ("*.json", "*.txt", "*.jinja", "tokenizer*", "*.model")


@runtime_checkable
class ChunkPolicy(Protocol):
    name: str
    device: str
    dtype: str
    parameters: int
    chunk_length: int

    def infer(self, obs: Observation) -> ActionChunk:
        """Actions (n, 6) float64 in robot units and JOINT_NAMES order, with timings."""
        ...

    def reset(self) -> None: ...


class _Reporter:
    """Fills in the fields every status carries and remembers the preflight results."""

    def __init__(self, on_status: StatusFn, source: str, revision: str, cancel: threading.Event | None) -> None:
        self.on_status = on_status
        self.source = source
        self.revision = revision
        self.cancel = cancel
        self.preflight: tuple[PreflightCheck, ...] = ()
        self.device = ""
        self.image_size: tuple[int, ...] = ()  # the policy's image input (height, width), for the UI

    def __call__(self, phase: str, **fields: object) -> None:
        if self.cancel is not None and self.cancel.is_set() and phase not in ("failed", "fallback"):
            raise PolicyCancelled("policy loading cancelled")
        fields.setdefault("preflight", self.preflight)
        fields.setdefault("device", self.device)
        fields.setdefault("image_size", self.image_size)
        self.on_status(ModelStatus(phase=phase, source=self.source, revision=self.revision, **fields))  # type: ignore[arg-type]


def _scripted(model: ModelSettings, rate_hz: float) -> ScriptedPolicy:
    return ScriptedPolicy(rate_hz=rate_hz, chunk_length=model.actions_per_chunk)


def load_policy(
    model: ModelSettings,
    cameras: Mapping[str, CameraSettings],
    arm_units: str,
    on_status: StatusFn,
    cancel: threading.Event | None = None,
    *,
    rate_hz: float = 30.0,
) -> ChunkPolicy:
    """Resolve, download, check, load and warm up the configured policy.

    Raises PolicyError (message + fix) when it cannot load and fallback is off, PolicyCancelled when
    `cancel` is set.
    """
    if model.mode == "scripted":
        policy = _scripted(model, rate_hz)
        on_status(ModelStatus(phase="ready", source="scripted", message="scripted demo motion",
                              device="cpu", dtype="none"))
        return policy
    report = _Reporter(on_status, model.path or "(demo checkpoint)", model.revision if model.path else "", cancel)
    try:
        return _load_smolvla(model, cameras, arm_units, report)
    except PolicyCancelled:
        raise
    except PolicyError as exc:
        err = exc
    except Exception as exc:  # a bug or an unforeseen LeRobot error: still one paragraph, still a fix
        err = PolicyError(
            f"Loading the policy failed unexpectedly: {type(exc).__name__}: {exc}.",
            "Run `lepetpal model check <path>` for details; set [model] mode = \"scripted\" to run without it.",
        )
    if model.fallback_to_scripted:
        report("fallback", message="SmolVLA could not load: running the scripted demo motion instead",
               error=err.message, fix=err.fix, device="cpu", dtype="none")
        return _scripted(model, rate_hz)
    report("failed", message="the policy could not load", error=err.message, fix=err.fix)
    raise err


def resolve_checkpoint(model: ModelSettings, report: _Reporter, cancel: threading.Event | None) -> Path:
    """The local folder of the configured checkpoint (demo, local path or hub download)."""
    if not model.path:
        from lepetpal_tui.policy.demo_checkpoint import demo_policy_dir, ensure_demo_policy

        report("resolving", message=f"demo checkpoint in {demo_policy_dir()}")
        return ensure_demo_policy()
    report("resolving", message=f"looking for {model.path}")
    local = Path(model.path).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise PolicyError(
            f"[model] path {model.path} is a file; a checkpoint is a folder with config.json and model.safetensors.",
            "Set [model] path to the checkpoint folder (or a hub repo id like lerobot/smolvla_base).",
        )
    if not looks_like_repo_id(model.path):
        raise PolicyError(
            f"[model] path {model.path} does not exist and is not a hub repo id (owner/name).",
            "Fix [model] path (or --model-path / MODEL_PATH): an existing checkpoint folder or a hub repo id.",
        )
    return _download(model.path, model.revision, model.cache_dir, report, cancel, what="checkpoint")


def _download(
    repo_id: str,
    revision: str,
    cache_dir: str,
    report: _Reporter,
    cancel: threading.Event | None,
    *,
    what: str,
    patterns: tuple[str, ...] | None = None,
) -> Path:
    def progress(done: int, total: int, current: str) -> None:
        report("downloading", message=f"downloading {what} {repo_id}", bytes_done=done, bytes_total=total,
               current_file=current)

    return download_snapshot(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                             on_progress=progress, cancel=cancel, what=what)


def resolve_backbone(dir: Path, model: ModelSettings, report: _Reporter, cancel: threading.Event | None) -> str:
    """A local folder with the VLM backbone's config, processor and tokenizer."""
    import json

    from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME

    bundled = dir / BACKBONE_DIRNAME
    if bundled.is_dir():
        return str(bundled)
    try:
        name = str(json.loads((dir / "config.json").read_text()).get("vlm_model_name") or "")
    except (OSError, ValueError):
        name = ""
    if not name:
        raise PolicyError(f"config.json in {dir} names no vlm_model_name.", "Use a complete SmolVLA checkpoint.")
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if not looks_like_repo_id(name):
        raise PolicyError(
            f"the checkpoint's VLM backbone {name} is neither a folder here nor a hub repo id.",
            f"Put the backbone files in {bundled} (config.json, processor and tokenizer files).",
        )
    try:
        return str(_download(name, "main", model.cache_dir, report, cancel, what="VLM backbone config",
                             patterns=BACKBONE_FILE_PATTERNS))
    except PolicyError as exc:
        # The checkpoint itself is here: the hub errors' usual fixes (about [model] path) do not apply.
        raise PolicyError(exc.message, f"The checkpoint needs its VLM backbone's config, processor and tokenizer "
                          f"files ({name} on the hub): run once with network access (they are cached), or copy "
                          f"them into {bundled}, where they are used without the hub.") from None


def _convert_if_legacy(
    dir: Path, model: ModelSettings, report: _Reporter
) -> tuple[Path, tuple[PreflightCheck, ...]]:
    """A pre-0.4 checkpoint -> its converted copy in our cache (made once), and a check that says so."""
    from lepetpal_tui.policy import legacy_checkpoint as legacy

    if not legacy.is_legacy_checkpoint(dir):
        return dir, ()
    out = legacy.converted_dir(dir)
    if not legacy.is_converted(out):
        backbone = resolve_backbone(dir, model, report, report.cancel)
        report("loading", message=f"converting a pre-0.4 checkpoint with LeRobot's migration into {out}")
        out = legacy.convert(dir, backbone, out)
    note = PreflightCheck(
        "format", True,
        f"saved before LeRobot 0.4 (statistics in the weights): converted with LeRobot's migration into "
        f"{out}; the original is untouched",
    )
    return out, (note,)


def _image_input_size(checkpoint: Path) -> tuple[int, ...]:
    """(height, width) SmolVLA resizes camera frames to: `resize_imgs_with_padding` in config.json is
    (width, height), as LeRobot's prepare_images reads it; () when absent."""
    try:
        cfg = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        w, h = cfg["resize_imgs_with_padding"]
        return (int(h), int(w))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def _load_smolvla(
    model: ModelSettings, cameras: Mapping[str, CameraSettings], arm_units: str, report: _Reporter
) -> ChunkPolicy:
    dir = resolve_checkpoint(model, report, report.cancel)
    report.source = model.path or str(dir)
    report("loading", message=f"checking {dir}")
    from lepetpal_tui.policy import smolvla as sv
    from lepetpal_tui.policy.preflight import failures, run_preflight

    dir, converted = _convert_if_legacy(dir, model, report)
    device = sv.resolve_device(model.device)
    report.device = device
    checks = run_preflight(
        dir, cameras=cameras, camera_map=model.camera_map, arm_units=arm_units,
        requested_device=model.device, resolved_device=device, available_devices=sv.available_devices(),
    )
    report.preflight = (*converted, *checks)
    report.image_size = _image_input_size(dir)
    bad = failures(checks)
    if bad:
        first = bad[0]
        more = f" ({len(bad) - 1} more problem(s) in the preflight list)" if len(bad) > 1 else ""
        raise PolicyError(f"Preflight {first.name}: {first.detail}{more}", first.fix)
    backbone = resolve_backbone(dir, model, report, report.cancel)
    report("loading", message=f"loading SmolVLA from {dir} on {device}")
    t0 = time.perf_counter()

    def load() -> sv.SmolVLARunner:
        return sv.load_local(dir, model=model, device=device, backbone=backbone)

    runner = load()
    load_s = time.perf_counter() - t0
    report("warming_up", message=f"first inference ({runner.parameters:,} parameters, loaded in {load_s:.2f} s)",
           parameters=runner.parameters)
    obs = sv.warmup_observation(tuple(cameras))
    try:
        runner, dtype_note, warm_s = sv.choose_dtype(
            runner, model.dtype, obs, load,
            progress=lambda step: report("warming_up", message=f"{step} (policy built and loaded in {load_s:.1f} s)"),
        )
    except PolicyError:
        raise
    except Exception as exc:
        raise PolicyError(
            f"the first inference of {dir} failed ({type(exc).__name__}: {exc}).",
            "Check the checkpoint with `lepetpal model check`; try [model] dtype = \"fp32\" or device = \"cpu\".",
        ) from exc
    report("ready", message=f"ready: {dtype_note}; policy built and loaded in {load_s:.1f} s", parameters=runner.parameters, dtype=runner.dtype,
           warmup_s=warm_s)
    return runner

