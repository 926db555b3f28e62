"""CPU speed settings for SmolVLA: int8 linears (policy/speed/int8_linear.py), a lean denoise step
(policy/speed/lean_denoiser.py), the vision encoder and the prefix pass in row halves
(policy/speed/vision_encoder.py, policy/speed/prefix_halves.py), SDPA attention, and bf16 of the VLM + action expert.

int8 is the CPU default (see int8_linear for the measured throughputs); bf16 stays available. Only the
layers inside `vlm_with_expert` change (plus the small timestep/action MLP): the state/action projections
are small and stay fp32.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from lepetpal_tui.policy.speed import int8_saturation, kernel_probe
from lepetpal_tui.policy.speed.cpu_caps import cpu_caps
from lepetpal_tui.policy.speed.int8_linear import (
    Int8Linear,
    fuse_projections,
    openmp_waits_passively,
    quantize_linears,
    small_ops_on_one_thread,
)
from lepetpal_tui.policy.speed.lean_denoiser import use_lean_denoiser
from lepetpal_tui.policy.speed.prefix_halves import use_row_halves_prefix
from lepetpal_tui.policy.speed.vision_encoder import use_row_halves_vision


def contiguous_vision_embeddings(module: nn.Module) -> int:
    """SigLIP's patch embeddings come out transposed (non-contiguous); the residual stream keeps that
    layout through all 12 layers, so every LayerNorm copies its input and every add runs strided.
    One copy at the start avoids them (same values)."""
    n = 0
    for mod in module.modules():
        if type(mod).__name__.endswith("VisionEmbeddings"):
            mod.register_forward_hook(lambda _m, _i, out: out.contiguous())
            n += 1
    return n


class InplaceGELU(nn.Module):
    """The vision MLP's GELU, in place on fc1's fresh output (no 12 MB temporary per layer).

    approximate="none" (erf) differs from SigLIP's tanh form by < 5e-4 per activation, far below the int8
    quantization step of fc2's input, and is 3x faster on this CPU (0.85 vs 2.6 ms per layer).
    """

    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x, approximate=self.approximate)  # type: ignore[no-any-return]


def inplace_vision_gelu(module: nn.Module) -> int:
    """Swap transformers' tanh-GELU in the vision MLPs (fc1 -> act -> fc2) for an in-place erf GELU
    (int8 only: with fp32/bf16 linears the tanh form is kept exactly)."""
    n = 0
    for mod in module.modules():
        act = getattr(mod, "activation_fn", None)
        if type(mod).__name__.endswith("VisionMLP") and type(act).__name__ in ("GELUTanh", "PytorchGELUTanh"):
            setattr(mod, "activation_fn", InplaceGELU("none"))  # noqa: B010
            n += 1
    return n


def int8_engine(name: str) -> str | None:
    """The quantized engine that packs the int8 linear `name` (None: the default, int8_saturation.default_engine).

    oneDNN packs the vision encoder's linears (1024 tokens): measured 5-25% faster than fbgemm there on
    the 2-core EPYC (qkv 5.5 -> 4.6 ms, fc1 7.9 -> 6.1 ms), but slower for the expert's 50 tokens. oneDNN
    packs every layer where its kernels multiply in a way fbgemm's do not:
    - AMX (tile int8 multiplies): one thread, real shapes, on the 2-core Intel Xeon with AMX: 25 x 720 ->
      2048 at 740 GFLOP/s against fbgemm's 440, 50 x 960 -> 2560 at 1030 against 560, 512 x 768 -> 3072
      at 2090 against 570 (fp32: 110-190); the denoise steps of a chunk 320 -> 272 ms, the prefix 76 -> 65 ms.
    - VNNI that only oneDNN uses (`onednn_vnni_only`: AVX-VNNI on Alder Lake and later laptops, N100):
      fbgemm runs its AVX2 kernel there (int16 pair sums: 7-bit activations, ~2x fp32 at best).
    Never an engine whose kernel is unsound here (onednn on aarch64: int8_saturation.sound).
    """
    if "onednn" not in torch.backends.quantized.supported_engines or not int8_saturation.sound("onednn"):
        return None
    if "vision_model" in name.split(".") or amx_int8_usable() or onednn_vnni_only():
        return "onednn"
    return None


@functools.cache
def onednn_vnni_only() -> bool:
    """oneDNN's int8 kernel takes full 8-bit activations exactly (int32 sums: VNNI) where fbgemm's saturates.

    That is AVX-VNNI without AVX-512 (fbgemm has no AVX-VNNI kernels; oneDNN has). Read from the probe
    (policy/speed/int8_saturation.py), so it follows the kernels each library really runs. Measured on
    the 2-core AMD EPYC with the kernels capped that way (oneDNN at AVX512_CORE_VNNI, fbgemm at AVX2;
    bench/int8_engines.py, app setting): a chunk 0.87-0.90 of fbgemm's for the rest, 1.13 against 1.17
    degrees from fp32. Not measured on a real AVX-VNNI CPU."""
    if "onednn" not in torch.backends.quantized.supported_engines:
        return False
    return int8_saturation.saturates(None) and not int8_saturation.saturates("onednn")


def int8_engine_reason() -> str:
    """Why every layer goes to oneDNN, if it does ("" otherwise), for the Model pane's note."""
    if amx_int8_usable():
        return " (AMX granted)"
    if onednn_vnni_only():
        return " (oneDNN's VNNI kernels; fbgemm's sum pairs in int16 here)"
    return ""


def int8_activation_bits() -> str:
    """How many activation bits the int8 kernels of `int8_engine`'s engines take here ("7-bit", "8-bit", or
    one per engine where they differ), probed (policy/speed/int8_saturation.py)."""
    return int8_saturation.describe([int8_engine("vision_model.x"), int8_engine("x")])


def int8_engines() -> str:
    """Which engines `int8_engine` gives the vision encoder and the other layers, as one short text (the
    accuracy check's cache tells paths apart by it). The default is named as resolved ("x86", or "qnnpack"
    where torch's own default is unsound), so a check made with another engine is never taken for it."""
    vision, rest = (int8_saturation.engine_name(int8_engine(n)) for n in ("vision_model.x", "x"))
    return f"vision {vision}, rest {rest}"


@functools.cache
def amx_int8_usable() -> bool:
    """AMX int8 in the CPU's flags and granted to this process by the kernel (Linux asks for it per
    process; torch's `_init_amx` makes that request, as oneDNN would on its first AMX kernel)."""
    if not cpu_caps().int8_amx:
        return False
    init = getattr(torch.cpu, "_init_amx", None)
    try:
        return bool(init()) if init is not None else False
    except Exception:  # an old torch or kernel: oneDNN then runs its AVX-512 kernels, still correct
        return False


def prefix_with_small_ops_on_one_thread(vlm_with_expert: nn.Module) -> None:
    """The text prefix pass (~70 tokens through the VLM's layers): like the expert's steps, its small
    ops run on one thread and its int8 linears on all (see `small_ops_on_one_thread`)."""
    forward = vlm_with_expert.forward

    def prefix_forward(*args: Any, **kwargs: Any) -> Any:
        with small_ops_on_one_thread():
            return forward(*args, **kwargs)

    setattr(vlm_with_expert, "forward", prefix_forward)  # noqa: B010 (an instance override)


def to_int8(policy: nn.Module) -> int:
    """int8 linears + SDPA attention for SmolVLA's VLM + action expert, in place; the rest stays fp32.
    The vision encoder runs its rows in two halves on two threads, its attention in bf16 where the CPU
    has bf16 dot products; with passive OpenMP waiting (the policy process) so does the action expert."""
    vlm_with_expert: nn.Module = policy.model.vlm_with_expert  # type: ignore[union-attr,assignment]
    vlm_with_expert.to(torch.float32)
    use_sdpa_attention(policy)
    use_row_halves_vision(policy)
    contiguous_vision_embeddings(vlm_with_expert)
    inplace_vision_gelu(vlm_with_expert)
    fuse_projections(vlm_with_expert, engine=int8_engine)
    if openmp_waits_passively():  # the policy process
        # Expert rows in halves: 490 -> 335 ms for ten steps here; with spinning workers slower (279 -> 418).
        use_lean_denoiser(policy, small_ops_on_one_thread, halves=True)
        prefix_with_small_ops_on_one_thread(vlm_with_expert)
        # The prefix pass's rows in halves too; other calls keep the small-ops wrapper just installed.
        use_row_halves_prefix(vlm_with_expert, vlm_with_expert.forward)
    else:
        use_lean_denoiser(policy)
    n = quantize_linears(vlm_with_expert, engine=int8_engine)
    kernel_probe.record("int8 linears", int8_engines() + int8_engine_reason())
    # The timestep/action MLP runs on every flow step (50 x 1440 -> 720 -> 720, ~13 ms a chunk in fp32);
    # the state and action in/out projections stay fp32.
    model: Any = policy.model
    for name in ("action_time_mlp_in", "action_time_mlp_out"):
        if isinstance(getattr(model, name, None), nn.Linear):
            setattr(model, name, Int8Linear(getattr(model, name), int8_engine(name)))
            n += 1
    return n


def to_bf16(policy: nn.Module) -> None:
    """bf16 + SDPA attention for the VLM + action expert only; the projections stay fp32 (whole-policy
    bf16 breaks)."""
    vlm_with_expert: nn.Module = policy.model.vlm_with_expert  # type: ignore[union-attr,assignment]
    vlm_with_expert.to(torch.bfloat16)
    use_sdpa_attention(policy)


def sdpa_attention(
    module: nn.Module,
    attention_mask: torch.Tensor,
    batch_size: int,
    head_dim: int,
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
) -> torch.Tensor:
    """SmolVLMWithExpertModel.eager_attention_forward through one fused SDPA call (same fp32 scores).

    LeRobot's eager version expands K/V for grouped-query attention, materialises the scores and runs
    ~15 small ops per layer and flow step; on a CPU that overhead is most of the expert's attention time.
    Inputs are [batch, seq, heads, head_dim]; the output is [batch, seq, heads * head_dim].
    """
    q = query_states.transpose(1, 2).to(torch.float32)
    k = key_states.transpose(1, 2).to(torch.float32)
    v = value_states.transpose(1, 2).to(torch.float32)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    mask = attention_mask[:, None, :, :]
    # A fully masked row (a padding token) would be NaN in SDPA, uniform in eager; padding is never
    # attended to, so any finite value is right: let such rows see everything.
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=head_dim**-0.5)
    return out.transpose(1, 2).reshape(batch_size, -1, q.shape[1] * q.shape[3]).to(value_states.dtype)


def use_sdpa_attention(policy: nn.Module) -> None:
    """Route SmolVLA's VLM + expert attention through `sdpa_attention` (this instance only)."""
    vlm_with_expert: nn.Module = policy.model.vlm_with_expert  # type: ignore[union-attr,assignment]

    def attention(*args: torch.Tensor | int) -> torch.Tensor:
        return sdpa_attention(vlm_with_expert, *args)  # type: ignore[arg-type]

    setattr(vlm_with_expert, "eager_attention_forward", attention)  # noqa: B010 (an instance override)
