"""SmolVLA's vision encoder (SigLIP, 12 layers over 1024 patches) for the int8 CPU path: the patches'
rows in two halves on two threads (policy/speed/row_halves.py), attention with the kernel measured fastest
on this CPU (fp32 SDPA, bf16 SDPA or bf16 per head: policy/speed/kernel_probe.py).

Same layer math as transformers' SmolVLMEncoderLayer (pre-norm attention and MLP with residuals); the
projections are whatever the layers hold (int8 linears after `to_int8`).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from lepetpal_tui.policy.speed import kernel_probe
from lepetpal_tui.policy.speed.int8_linear import Project, side_by_side
from lepetpal_tui.policy.speed.row_halves import halves_of, run_halves


def attention_kernel(rows: int, keys: int, dim: int, heads: int, threads: int) -> str:
    """The attention kernel measured fastest for these shapes on this CPU (policy/speed/kernel_probe.py):
    bf16 per head on the AMD EPYC's AVX512-BF16 (20 -> 13.5 ms a layer), bf16 SDPA with AMX (13.8 -> 5.8),
    fp32 SDPA on the Intel Xeon without AMX."""
    return kernel_probe.vision_attention_kernel(rows, keys, dim, heads, threads)


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
        self.kernel: str | None = None  # kernel_probe.ATTENTION_KERNELS: measured on the first call
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
        rows = halves_of(length)
        if self.kernel is None:
            threads = torch.get_num_threads()
            share = threads if len(rows) == 1 else (threads + 1) // 2  # the first half's, as run_halves gives
            first = layers[0].self_attn
            self.kernel = attention_kernel(rows[0][1] - rows[0][0], length, first.head_dim, first.num_heads, share)
        kernel = self.kernel
        dtype = kernel_probe.kernel_dtype(kernel)
        kv = [(torch.empty(batch, layer.self_attn.num_heads, length, layer.self_attn.head_dim, dtype=dtype),
               torch.empty(batch, layer.self_attn.num_heads, length, layer.self_attn.head_dim, dtype=dtype))
              for layer in layers]

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
                o = kernel_probe.attention(kernel, y[:, :, 0].transpose(1, 2), keys, values, attn.scale)
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
