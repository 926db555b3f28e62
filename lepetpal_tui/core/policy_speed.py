"""CPU speed settings for SmolVLA: int8 linears (core/int8_linear.py), a lean denoise step
(core/lean_denoiser.py), SDPA attention, bf16 vision attention, and bf16 of the VLM + action expert.

int8 is the CPU default (see int8_linear for the measured throughputs); bf16 stays available. Only the
layers inside `vlm_with_expert` change (plus the small timestep/action MLP): the state/action projections
are small and stay fp32.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from lepetpal_tui.core.int8_linear import (
    Int8Linear,
    fuse_projections,
    openmp_waits_passively,
    quantize_linears,
    small_ops_on_one_thread,
)
from lepetpal_tui.core.lean_denoiser import use_lean_denoiser


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


def vision_engine(name: str) -> str | None:
    """oneDNN packs the vision encoder's linears (1024 tokens): measured 5-25% faster than fbgemm there on
    the 2-core EPYC (qkv 5.5 -> 4.6 ms, fc1 7.9 -> 6.1 ms), but slower for the expert's 50 tokens."""
    if "vision_model" in name.split(".") and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return None


def bf16_matmul_supported() -> bool:
    """bf16 matmuls beat fp32 only with hardware bf16 dot products (AVX512-BF16 or AMX); elsewhere they
    are emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


BF16_VISION_ATTENTION = "lepetpal_bf16_bmm"


def bf16_vision_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The vision encoder's attention (1024 patches, 12 heads) as bf16 matmuls, one head at a time.

    fp32 flash attention runs at the fp32 peak here (~20 ms a layer, a quarter of the whole chunk);
    bf16 dot products (AVX512-BF16) double that peak, and PyTorch's bf16 SDPA kernel does not use them
    on this CPU. One head's scores (2 MB in bf16) stay in cache for the softmax, which computes in fp32
    internally: 20 -> 13.5 ms a layer. Scores and probabilities are rounded to bf16 (output differs from
    fp32 by ~1% of its range on random data, below the int8 error of the linears around it).
    Inputs [B, H, L, D]; returns ([B, L, H, D], None) like transformers' attention functions.
    """
    if attention_mask is not None or is_causal or dropout:  # padded patches: not SmolVLA's case
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, is_causal=is_causal, **kwargs)
        return out, None
    batch, heads, length, dim = query.shape
    scale = dim**-0.5 if scaling is None else scaling
    # Contiguous [B * H, L, D] copies: per-head slices the matmuls take without copying again.
    cf = torch.contiguous_format
    q = torch.mul(query, scale).to(torch.bfloat16, memory_format=cf).view(batch * heads, length, dim)
    k = key.to(torch.bfloat16, memory_format=cf).view(batch * heads, -1, dim).transpose(1, 2)
    v = value.to(torch.bfloat16, memory_format=cf).view(batch * heads, -1, dim)
    out = torch.empty(batch * heads, length, dim, dtype=torch.bfloat16)
    _per_head(q, k, v, out)
    return out.view(batch, heads, length, dim).transpose(1, 2).to(query.dtype), None


_head_pool: tuple[int, ThreadPoolExecutor] | None = None


def _per_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
    """out[i] = softmax(q[i] @ k[i]) @ v[i] for every head i: the heads shared out over torch's threads
    as Python threads, each running its heads' ops on one thread.

    Multi-threaded ops would cost three OpenMP wake-ups per head (~100 us each on a VM with passive
    waiting, as the policy process runs: 14.4 vs 17.9 ms a layer there). The ops release the GIL, so
    the threads run in parallel. With spinning OpenMP workers the heads run in turn on all threads
    (the Python threads would compete with the spinners).
    """
    global _head_pool
    threads = torch.get_num_threads()
    if threads == 1 or not openmp_waits_passively():
        for i in range(q.shape[0]):
            torch.bmm(torch.softmax(torch.bmm(q[i:i + 1], k[i:i + 1]), dim=-1), v[i:i + 1], out=out[i:i + 1])
        return
    if _head_pool is None or _head_pool[0] != threads:
        _head_pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="lepetpal-heads"))
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def heads(first: int) -> None:
        torch.set_num_threads(1)  # OpenMP's thread count is per thread: this one's ops run on it alone
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):  # as the caller
            for i in range(first, q.shape[0], threads):
                torch.bmm(torch.softmax(torch.bmm(q[i:i + 1], k[i:i + 1]), dim=-1), v[i:i + 1], out=out[i:i + 1])

    torch.set_num_threads(1)
    try:
        for done in [_head_pool[1].submit(heads, first) for first in range(threads)]:
            done.result()
    finally:
        torch.set_num_threads(threads)


def use_bf16_vision_attention(policy: nn.Module) -> bool:
    """Route the SigLIP encoder's attention through `bf16_vision_attention` where the CPU has bf16 dot
    products (this model only: the name is set on its vision config)."""
    if not bf16_matmul_supported():
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(BF16_VISION_ATTENTION, bf16_vision_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(BF16_VISION_ATTENTION, sdpa_mask)  # masks as for SDPA
    vlm: Any = policy.model.vlm_with_expert.get_vlm_model()  # type: ignore[union-attr,operator]
    vlm.vision_model.config._attn_implementation = BF16_VISION_ATTENTION
    return True


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
    The vision encoder's attention runs in bf16 where the CPU has bf16 dot products."""
    vlm_with_expert: nn.Module = policy.model.vlm_with_expert  # type: ignore[union-attr,assignment]
    vlm_with_expert.to(torch.float32)
    use_sdpa_attention(policy)
    use_bf16_vision_attention(policy)
    contiguous_vision_embeddings(vlm_with_expert)
    inplace_vision_gelu(vlm_with_expert)
    fuse_projections(vlm_with_expert, engine=vision_engine)
    if openmp_waits_passively():  # the policy process
        use_lean_denoiser(policy, small_ops_on_one_thread)
        prefix_with_small_ops_on_one_thread(vlm_with_expert)
    else:
        use_lean_denoiser(policy)
    n = quantize_linears(vlm_with_expert, engine=vision_engine)
    # The timestep/action MLP runs on every flow step (50 x 1440 -> 720 -> 720, ~13 ms a chunk in fp32);
    # the state and action in/out projections stay fp32.
    model: Any = policy.model
    for name in ("action_time_mlp_in", "action_time_mlp_out"):
        if isinstance(getattr(model, name, None), nn.Linear):
            setattr(model, name, Int8Linear(getattr(model, name)))
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
