"""SmolVLA's vision encoder (SigLIP, 12 layers over 1024 patches) for the int8 CPU path: the patches'
rows in two halves on two threads (policy/speed/row_halves.py), attention in bf16 where the CPU has bf16 dot
products.

Same layer math as transformers' SmolVLMEncoderLayer (pre-norm attention and MLP with residuals); the
projections are whatever the layers hold (int8 linears after `to_int8`).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from lepetpal_tui.policy.speed.cpu_caps import cpu_caps
from lepetpal_tui.policy.speed.int8_linear import Project, side_by_side
from lepetpal_tui.policy.speed.row_halves import halves_of, run_halves


def bf16_matmul_supported() -> bool:
    """bf16 matmuls beat fp32 only with hardware bf16 dot products (AVX512-BF16, AMX, ARM BF16); elsewhere
    they are emulated and slower (policy/speed/cpu_caps.py)."""
    return cpu_caps().bf16_native


def bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q @ k^T) @ v for q [N, Lq, D] (already scaled), k and v [N, L, D], all bf16; one head at
    a time.

    fp32 flash attention runs at the fp32 peak here (~20 ms a layer, a quarter of the whole chunk);
    bf16 dot products (AVX512-BF16) double that peak, and PyTorch's bf16 SDPA kernel does not use them
    on this CPU. One head's scores (1-2 MB in bf16) stay in cache for the softmax, which computes in fp32
    internally: 20 -> 13.5 ms a layer. Scores and probabilities are rounded to bf16 (output differs from
    fp32 by ~1% of its range on random data, below the int8 error of the linears around it).
    """
    out = torch.empty_like(q)
    kt = k.transpose(1, 2)
    for i in range(q.shape[0]):
        torch.bmm(torch.softmax(torch.bmm(q[i:i + 1], kt[i:i + 1]), dim=-1), v[i:i + 1], out=out[i:i + 1])
    return out


def _layer_parts_ok(layer: nn.Module) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (all(hasattr(layer, n) for n in ("layer_norm1", "layer_norm2"))
            and all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "head_dim",
                                                "scale"))
            and all(hasattr(mlp, n) for n in ("fc1", "fc2", "activation_fn")))


class RowHalvesVisionEncoder:
    """`encoder.forward` (an instance override) with the patches' rows in two halves.

    Per layer each half normalises and projects its own rows, writes its keys and values into the
    layer's shared K/V, meets the other half (the only sync of the layer), then attends with its own
    queries over all keys and runs its rows' output projection and MLP. A padding mask (not SmolVLA's
    case: its images are never padded) goes to transformers' own forward.
    """

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.original = encoder.forward
        self.bf16 = bf16_matmul_supported()
        # Each layer's q|k|v as one call; looked up on first use (the projections become int8 after this
        # is installed).
        self._qkv: list[Project] | None = None

    def __call__(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        if attention_mask is not None:
            return self.original(inputs_embeds, attention_mask)
        from transformers.modeling_outputs import BaseModelOutput

        layers: list[Any] = list(self.encoder.layers)  # type: ignore[arg-type]
        if self._qkv is None:
            self._qkv = [side_by_side(layer.self_attn, ("q_proj", "k_proj", "v_proj")) for layer in layers]
        qkv = self._qkv
        batch, length, width = inputs_embeds.shape
        dtype = torch.bfloat16 if self.bf16 else inputs_embeds.dtype
        kv = [(torch.empty(batch, layer.self_attn.num_heads, length, layer.self_attn.head_dim, dtype=dtype),
               torch.empty(batch, layer.self_attn.num_heads, length, layer.self_attn.head_dim, dtype=dtype))
              for layer in layers]
        rows = halves_of(length)

        def half(i: int, barrier: threading.Barrier) -> torch.Tensor:
            start, stop = rows[i]
            n = stop - start
            x = inputs_embeds[:, start:stop]
            for layer, project, (keys, values) in zip(layers, qkv, kv, strict=True):
                attn = layer.self_attn
                heads, dim = attn.num_heads, attn.head_dim
                y = project(layer.layer_norm1(x)).view(batch, n, 3, heads, dim)  # q | k | v
                keys[:, :, start:stop].copy_(y[:, :, 1].transpose(1, 2))  # [B, H, n, D]
                values[:, :, start:stop].copy_(y[:, :, 2].transpose(1, 2))
                barrier.wait()  # every row's keys and values are in
                q = y[:, :, 0].transpose(1, 2)
                if self.bf16:
                    q = torch.mul(q, attn.scale).to(torch.bfloat16, memory_format=torch.contiguous_format)
                    flat = (batch * heads, -1, dim)
                    o = bf16_attention(q.view(flat), keys.view(flat), values.view(flat)).view(batch, heads, n, dim)
                    o = o.to(x.dtype)
                else:
                    o = torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=attn.scale)
                x = x + attn.out_proj(o.transpose(1, 2).reshape(batch, n, width))
                x = x + layer.mlp.fc2(layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(x))))
            return x

        out = run_halves(half, len(rows))
        hidden: Any = out[0] if len(out) == 1 else torch.cat(out, dim=1)
        return BaseModelOutput(last_hidden_state=hidden)


def use_row_halves_vision(policy: nn.Module) -> bool:
    """Route SmolVLA's vision encoder through `RowHalvesVisionEncoder` (this instance only), if its
    layers have the parts it uses."""
    vlm: Any = policy.model.vlm_with_expert.get_vlm_model()  # type: ignore[union-attr,operator]
    encoder = vlm.vision_model.encoder
    if not all(_layer_parts_ok(layer) for layer in encoder.layers):
        return False
    setattr(encoder, "forward", RowHalvesVisionEncoder(encoder))  # noqa: B010 (an instance override)
    return True
