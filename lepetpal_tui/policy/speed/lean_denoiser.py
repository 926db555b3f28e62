"""SmolVLA's flow-matching denoise step for the action expert, with the per-chunk work done once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from lepetpal_tui.policy.speed import scripted_expert
from lepetpal_tui.policy.speed.decoder_layer import (
    Gather,
    KVExchange,
    LayerPlan,
    additive_mask,
    attention_needs,
    mask_columns,
    rms_norm,
    rope_angles,
)
from lepetpal_tui.policy.speed.row_halves import halves_of, run_halves


class LeanDenoiser:
    """SmolVLA's `denoise_step` for the action expert with the per-chunk work done once.

    LeRobot recomputes on every flow step what does not depend on x_t: attention masks, position ids,
    RoPE angles, the cross-attention layers' projection of the (fixed) prefix K/V, and the GQA
    expansion of the prefix K/V; with 16 layers x 10 steps the Python and small-op overhead of that
    is a large part of the denoising time on a CPU. The layers' parts are looked up once, q|k|v and
    gate|up are one projection each, RoPE runs once for q and k. Same math as LeRobot's expert path
    (fp32 attention scores, same residual order), checked against it by the bench and the tests.
    """

    def __init__(self, model: nn.Module,
                 small_ops: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
                 halves: bool = False) -> None:
        """`small_ops`: the context the layer stack runs in when it runs whole (int8 with passive OpenMP
        waiting: `small_ops_on_one_thread`); `halves`: run the action tokens' rows in two halves on two
        threads (policy/speed/row_halves.py) when torch has two or more threads."""
        self.model = model
        self.small_ops = small_ops
        self.halves = halves
        self._cache: object | None = None
        self._chunk: dict[str, Any] = {}
        self._layers: list[LayerPlan | None] | None = None  # looked up on first use (after quantization)

    def _expert_layers(self) -> list[LayerPlan | None]:
        if self._layers is None:
            vwe: Any = self.model.vlm_with_expert
            _, expert_layers = vwe.get_model_layers([vwe.get_vlm_model().text_model, vwe.lm_expert])
            every = int(vwe.self_attn_every_n_layers)
            cross = "cross" in str(vwe.attention_mode)
            self._layers = [
                None if layer is None else LayerPlan.of(layer, cross and not (every > 0 and idx % every == 0))
                for idx, layer in enumerate(expert_layers)
            ]
            if any(p is not None and p.int8 is not None for p in self._layers):
                scripted_expert.scripted()  # compiled here, once, not by both row halves at once
        return self._layers

    def _prepare(self, prefix_pad_masks: torch.Tensor, cache: Any, suffix_pad: torch.Tensor,
                 suffix_att: torch.Tensor) -> dict[str, Any]:
        from lerobot.policies.smolvla.modeling_smolvla import make_att_2d_masks

        vwe: Any = self.model.vlm_with_expert
        _, expert_layers = vwe.get_model_layers([vwe.get_vlm_model().text_model, vwe.lm_expert])
        bsize, suffix_len = suffix_pad.shape
        prefix_len = prefix_pad_masks.shape[1]
        full = torch.cat([prefix_pad_masks[:, None, :].expand(bsize, suffix_len, prefix_len),
                          make_att_2d_masks(suffix_pad, suffix_att)], dim=2)
        offsets = torch.sum(prefix_pad_masks, dim=-1)[:, None]
        positions = offsets + torch.cumsum(suffix_pad, dim=1) - 1
        head_dim = int(vwe.vlm.config.text_config.head_dim)
        kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for idx, (layer, plan) in enumerate(zip(expert_layers, self._expert_layers(), strict=True)):
            if plan is None:
                kv.append(None)
                continue
            keys = cache.layers[idx].keys  # [B, H_kv, P, D], post-RoPE
            values = cache.layers[idx].values
            if not plan.cross:
                kv.append((keys, values))
                continue
            attn = layer.self_attn
            k = keys.transpose(1, 2).reshape(*keys.shape[:1], keys.shape[2], -1)
            v = values.transpose(1, 2).reshape(*values.shape[:1], values.shape[2], -1)
            ek = attn.k_proj(k).view(bsize, prefix_len, -1, attn.head_dim).transpose(1, 2)
            ev = attn.v_proj(v).view(bsize, prefix_len, -1, attn.head_dim).transpose(1, 2)
            kv.append((ek.contiguous(), ev.contiguous()))
        plan0 = next(p for p in self._expert_layers() if p is not None)
        kv_heads, groups = plan0.kv_heads, plan0.heads // plan0.kv_heads
        rel = positions - torch.min(positions, dim=1, keepdim=True).values
        self_rope, cross_rope = rope_angles(positions, head_dim), rope_angles(rel, head_dim)
        rows = halves_of(suffix_len) if self.halves else [(0, suffix_len)]
        needs = attention_needs(full, rows, prefix_len)
        return {
            "kv": kv, "scale": head_dim**-0.5, "needs": needs,
            "halves": [{  # each half's rows of the masks and RoPE angles
                "rows": (a, b),
                # the prefix's columns and those of the halves this one reads keys from, in that order
                "self_mask": additive_mask(full[:, a:b, mask_columns(prefix_len, [rows[j] for j in needs[i]])],
                                   kv_heads, groups),
                "cross_mask": additive_mask(full[:, a:b, :prefix_len], kv_heads, groups),
                "self_rope": tuple(t[:, a:b] for t in self_rope), "cross_rope": tuple(t[:, a:b] for t in cross_rope),
            } for i, (a, b) in enumerate(rows)],
        }

    def _layer_stack(self, h: torch.Tensor, half: dict[str, Any], gather: Callable[[int], Gather | None]) -> torch.Tensor:
        c = self._chunk
        for idx, (plan, kv) in enumerate(zip(self._expert_layers(), c["kv"], strict=True)):
            if plan is None or kv is None:
                continue
            if plan.cross:
                h = plan.step(h, kv[0], kv[1], half["cross_mask"], half["cross_rope"], c["scale"])
            else:
                h = plan.step(h, kv[0], kv[1], half["self_mask"], half["self_rope"], c["scale"], gather(idx))
        return h

    def __call__(self, prefix_pad_masks: torch.Tensor, past_key_values: object, x_t: torch.Tensor,
                 timestep: torch.Tensor) -> torch.Tensor:
        model: Any = self.model
        # The small ops before and after the layer stack on one thread too (passive waiting: a few
        # OpenMP wake-ups fewer per step, 348 -> 336 ms for ten steps; the same values).
        with self.small_ops():
            suffix_embs, suffix_pad, suffix_att = model.embed_suffix(x_t, timestep)
        if self._cache is not past_key_values:  # outside small_ops: the halves see torch's threads
            self._chunk = self._prepare(prefix_pad_masks, past_key_values, suffix_pad, suffix_att)
            self._cache = past_key_values
        halves: list[dict[str, Any]] = self._chunk["halves"]
        if len(halves) == 1:
            with self.small_ops():
                h = self._layer_stack(suffix_embs, halves[0], lambda layer: None)
        else:
            exchange = KVExchange(len(self._expert_layers()), self._chunk["needs"])

            def half(i: int, barrier: threading.Barrier) -> torch.Tensor:
                start, stop = halves[i]["rows"]
                return self._layer_stack(suffix_embs[:, start:stop], halves[i],
                                         lambda layer: exchange.gather(layer, i, barrier))

            h = torch.cat(run_halves(half, len(halves)), dim=1)
        with self.small_ops():
            norm = model.vlm_with_expert.lm_expert.norm
            h = rms_norm(h, (norm.weight, float(norm.variance_epsilon)))
            suffix_out = h[:, -model.config.chunk_size:].to(dtype=torch.float32)
            v_t: torch.Tensor = model.action_out_proj(suffix_out)
        return v_t


def use_lean_denoiser(policy: nn.Module,
                      small_ops: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
                      halves: bool = False) -> bool:
    """Route SmolVLA's denoise_step through `LeanDenoiser` (this instance only) when the KV cache is on."""
    model: Any = policy.model
    if not getattr(policy.config, "use_cache", False):
        return False
    setattr(model, "denoise_step", LeanDenoiser(model, small_ops, halves))  # noqa: B010 (an instance override)
    return True
