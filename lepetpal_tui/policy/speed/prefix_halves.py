"""SmolVLA's prefix pass (image, language and state tokens through the VLM's text layers, filling the KV
cache the action expert reads) with the tokens' rows in two halves on two threads.

LeRobot's pass runs each op on all of torch's threads. In the policy process OpenMP's workers wait
passively, so each multi-threaded op pays a wake-up, and the ~70 rows give each op too little work to
hide it: the pass took 1.28x less on two threads than on one. In halves (policy/speed/row_halves.py),
each thread runs every op of its own rows, the layers' steps as TorchScript functions where the
layers are int8 (policy/speed/scripted_expert.py: no GIL), and the halves hand each other their new keys
and values once per layer (`KVExchange`). Measured inside whole chunks in the policy process's setting
(full-size SmolVLA, 2-core AMD EPYC, 12 interleaved chunks each): the pass 71 -> 51 ms with AVX-512
kernels (93 -> 70 ms beside the running app), 107 -> 79 ms with the kernels capped to AVX2 (113 -> 87).
The int8 activations are quantized per half (a scale per call), so the values differ from the whole pass
by int8 rounding, as far from fp32 as before (worst layer's keys 2.4 % either way).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lepetpal_tui.policy.speed import kernel_probe
from lepetpal_tui.policy.speed.decoder_layer import (
    KVExchange,
    LayerPlan,
    additive_mask,
    attention_needs,
    mask_columns,
    rms_norm,
    rope_angles,
)
from lepetpal_tui.policy.speed.row_halves import halves_of, run_halves


def _layer_parts_ok(layer: Any) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm"))
            and all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))
            and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")))


def _prefix_alone(inputs_embeds: list[torch.Tensor | None] | None, past_key_values: Any,
                  use_cache: bool | None) -> torch.Tensor | None:
    """The prefix's embeddings if this is the call that fills a new KV cache from the prefix alone."""
    if not use_cache or past_key_values is not None or inputs_embeds is None or len(inputs_embeds) != 2:
        return None
    return inputs_embeds[0] if inputs_embeds[1] is None else None


class RowHalvesPrefix:
    """`vlm_with_expert.forward` (an instance override) for the prefix pass, rows in two halves.

    Only the call that fills a new KV cache from the prefix alone takes this path; any other call (the
    training forward, LeRobot's own denoise step, one thread) goes to `fallback`. Returns what LeRobot's
    forward returns: the final-normed prefix hidden states and a `DynamicCache` with each layer's
    post-RoPE keys and values, [B, H_kv, P, D].
    """

    def __init__(self, vlm_with_expert: nn.Module, fallback: Callable[..., Any]) -> None:
        self.vwe: Any = vlm_with_expert
        self.fallback = fallback
        self._plans: list[LayerPlan] | None = None  # looked up on first use (after quantization)

    def _layers(self) -> list[LayerPlan]:
        if self._plans is None:
            vwe = self.vwe
            vlm_layers, _ = vwe.get_model_layers([vwe.get_vlm_model().text_model, vwe.lm_expert])
            self._plans = [LayerPlan.of(layer, cross=False) for layer in vlm_layers]
        return self._plans

    def __call__(self, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                 past_key_values: Any = None, inputs_embeds: list[torch.Tensor | None] | None = None,
                 use_cache: bool | None = None) -> Any:
        prefix = _prefix_alone(inputs_embeds, past_key_values, use_cache)
        if prefix is not None and attention_mask is not None and position_ids is not None:
            if len(halves_of(prefix.shape[1])) > 1:
                kernel_probe.record("prefix pass", "row halves on two threads")
                return self._prefix(prefix, attention_mask, position_ids)
            kernel_probe.record("prefix pass", "whole (one torch thread: nothing to split)")
        return self.fallback(attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)

    def _prefix(self, x: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> Any:
        from transformers.cache_utils import DynamicCache

        plans = self._layers()
        first = plans[0]
        batch = x.shape[0]
        rows = halves_of(x.shape[1])
        # A fully masked row (padding: an empty camera's image tokens) would be NaN with an additive
        # mask, uniform in LeRobot's; nothing attends to padding, so any finite value is right: let such
        # rows see everything (as `apply.sdpa_attention`).
        allowed = attention_mask | ~attention_mask.any(dim=-1, keepdim=True)
        needs = attention_needs(allowed, rows, 0)
        groups = first.heads // first.kv_heads
        cos, sin = rope_angles(position_ids, first.head_dim)
        masks = [additive_mask(allowed[:, a:b, mask_columns(0, [rows[j] for j in needs[i]])], first.kv_heads, groups)
                 for i, (a, b) in enumerate(rows)]
        no_keys = torch.empty(batch, first.kv_heads, 0, first.head_dim, dtype=x.dtype)
        scale = first.head_dim**-0.5
        exchange = KVExchange(len(plans), needs)

        def half(i: int, barrier: threading.Barrier) -> torch.Tensor:
            a, b = rows[i]
            h = x[:, a:b]
            for idx, plan in enumerate(plans):
                h = plan.step(h, no_keys, no_keys, masks[i], (cos[:, a:b], sin[:, a:b]), scale,
                              exchange.gather(idx, i, barrier))
            return h

        hidden = torch.cat(run_halves(half, len(rows)), dim=1)
        cache = DynamicCache()
        for idx, slot in enumerate(exchange.slots):
            kvs = [kv for kv in slot if kv is not None]
            cache.update(torch.cat([k for k, _ in kvs], dim=2), torch.cat([v for _, v in kvs], dim=2), idx)
        norm = self.vwe.get_vlm_model().text_model.norm
        return [rms_norm(hidden, (norm.weight, float(norm.variance_epsilon))), None], cache


def use_row_halves_prefix(vlm_with_expert: nn.Module, fallback: Callable[..., Any]) -> bool:
    """Route the prefix pass through `RowHalvesPrefix` (this instance only), the rest to `fallback`, if
    the VLM's text layers have the parts it uses."""
    vwe: Any = vlm_with_expert
    vlm_layers, _ = vwe.get_model_layers([vwe.get_vlm_model().text_model, vwe.lm_expert])
    if not all(_layer_parts_ok(layer) for layer in vlm_layers):
        kernel_probe.record("prefix pass", "LeRobot's (its text layers lack parts the halves use)")
        return False
    setattr(vlm_with_expert, "forward", RowHalvesPrefix(vlm_with_expert, fallback))  # noqa: B010 (an instance override)
    return True
