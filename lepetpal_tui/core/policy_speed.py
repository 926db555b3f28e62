"""CPU speed settings for SmolVLA: int8 dynamic quantization (VNNI) and bf16 of the VLM + action expert.

Measured on the 2-core AMD EPYC (avx512_vnni, avx512_bf16) with the real SmolVLA shapes: an int8 linear
(fbgemm, weights quantized per output channel, activations per call) runs at 500-700 GFLOP/s where fp32
reaches 120-190 and bf16 200-400, so int8 is the CPU default; bf16 stays available. Only the linear
layers inside `vlm_with_expert` change: the state/action projections are small and stay fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Modules never quantized: the VLM's lm_head is never called by SmolVLA (quantizing it only costs time).
SKIP_NAMES = ("lm_head",)


def int8_supported() -> bool:
    """Dynamic int8 linears need a quantized CPU engine (fbgemm/x86 on x86-64, qnnpack on ARM)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "qnnpack"))


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights (symmetric, per output channel) and per-call int8 activations.

    LeRobot reads `layer.<proj>.weight.dtype` to cast its inputs, so `weight` is kept as an empty fp32
    buffer that only carries the dtype; the real weights live in the packed parameters.
    """

    weight: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().to(torch.float32)
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8).to(torch.float64)
        zero_points = torch.zeros(w.shape[0], dtype=torch.int64)
        qweight = torch.quantize_per_channel(w, scales, zero_points, axis=0, dtype=torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("weight", torch.empty(0, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype != torch.float32:
            x = x.to(torch.float32)
        # reduce_range=False: full 8-bit activations; VNNI accumulates in int32, so nothing saturates.
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=False)
        return y if dtype == torch.float32 else y.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_linears(module: nn.Module, keep: Callable[[str], bool] = lambda name: False) -> int:
    """Replace every nn.Linear under `module` (except SKIP_NAMES and names `keep` accepts) in place.

    Returns how many were replaced. The module's other parameters are left as they are.
    """
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear)
        and not any(part in SKIP_NAMES for part in name.split("."))
        and not keep(name)
    ]
    for name, child in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Int8Linear(child))
    return len(targets)


def to_int8(policy: nn.Module) -> int:
    """int8 linears + SDPA attention for SmolVLA's VLM + action expert, in place; the rest stays fp32."""
    vlm_with_expert: nn.Module = policy.model.vlm_with_expert  # type: ignore[union-attr,assignment]
    vlm_with_expert.to(torch.float32)
    use_sdpa_attention(policy)
    return quantize_linears(vlm_with_expert)


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
