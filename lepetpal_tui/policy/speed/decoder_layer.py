"""One Llama-style decoder layer's step (SmolVLA's action expert and its VLM's text layers), looked up once,
and the hand-over of new keys and values between row halves on two threads (policy/speed/row_halves.py).

Used by the lean denoise step (policy/speed/lean_denoiser.py) and the prefix pass in halves
(policy/speed/prefix_halves.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lepetpal_tui.policy.speed import int8_linear, scripted_expert
from lepetpal_tui.policy.speed.int8_linear import Int8Linear, Project, side_by_side


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LeRobot's apply_rope with the angles computed once per chunk ([B, L, H, D] in, same out):
    cos = [cos, cos] and sin = [-sin, sin] over the two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


def rope_angles(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    d_half = head_dim // 2
    exponents = (2.0 / head_dim) * torch.arange(d_half, dtype=torch.float32, device=positions.device)
    radians = positions[..., None].to(torch.float32) / (10_000**exponents)[None, None, :]
    radians = radians[..., None, :]
    cos, sin = torch.cos(radians), torch.sin(radians)
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rms_norm(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """LlamaRMSNorm as one op (fp32 throughout, as the expert runs in fp32 here)."""
    weight, eps = norm
    return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)


def additive_mask(allowed: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """Boolean [B, L, S] mask -> additive fp32 [B * Hkv, G * L, S] as `gqa_attention` adds it (the
    [L, S] mask repeated per query head of a group, and per K/V head); built once per chunk."""
    zero = torch.zeros((), dtype=torch.float32)
    additive = torch.where(allowed, zero, torch.tensor(float("-inf")))
    b, length, s = additive.shape
    return additive[:, None, None].expand(b, kv_heads, groups, length, s).reshape(b * kv_heads, groups * length, s)


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Grouped-query attention without expanding K/V: q [B, L, H, D], k/v [B, Hkv, S, D], mask from
    `additive_mask`; returns [B, L, H * D].

    The query heads that share a K/V head are stacked as rows (query head h reads K/V head h // G, as
    LeRobot's repeat_interleave); for the expert's 50 x ~120 attention three batched ops beat SDPA's
    kernel and the K/V copies.
    """
    b, length, heads, dim = q.shape
    kv_heads = k.shape[1]
    qs = q.transpose(1, 2).reshape(b * kv_heads, heads // kv_heads * length, dim)
    scores = torch.baddbmm(mask, qs, k.reshape(b * kv_heads, -1, dim).transpose(1, 2), alpha=scale)
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(b * kv_heads, -1, dim))
    return out.view(b, heads, length, dim).transpose(1, 2).reshape(b, length, heads * dim)


@dataclass(frozen=True)
class LayerPlan:
    """What one decoder layer's step needs, looked up once (not through ~10 module calls per step): an
    action-expert layer, or (self-attention only) a text layer of the VLM for the prefix pass."""

    cross: bool
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    input_norm: tuple[torch.Tensor, float]
    post_norm: tuple[torch.Tensor, float]
    project_in: Project  # self: q|k|v side by side; cross: q (K/V come from the prefix)
    project_out: Project
    gate_up: Project
    intermediate: int
    down: Project
    act: Project
    # int8 layers with a SiLU MLP: (in, out, gate|up, down) packed weights and reduce_range, for the
    # TorchScript step (policy/speed/scripted_expert.py); None: the eager step only.
    int8: tuple[tuple[Any, Any, Any, Any], bool] | None = None

    @staticmethod
    def of(layer: Any, cross: bool) -> LayerPlan:
        attn, mlp = layer.self_attn, layer.mlp
        head_dim = int(attn.head_dim)
        project_in = attn.q_proj if cross else side_by_side(attn, ("q_proj", "k_proj", "v_proj"))
        gate_up = side_by_side(mlp, ("gate_proj", "up_proj"))
        return LayerPlan(
            cross=cross, heads=attn.q_proj.out_features // head_dim,
            kv_heads=attn.k_proj.out_features // head_dim, head_dim=head_dim,
            input_norm=(layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon)),
            post_norm=(layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon)),
            project_in=project_in, project_out=attn.o_proj, gate_up=gate_up,
            intermediate=int(mlp.gate_proj.out_features), down=mlp.down_proj, act=mlp.act_fn,
            int8=int8_parts((project_in, attn.o_proj, gate_up, mlp.down_proj), mlp.act_fn),
        )

    def scripted_step(self) -> bool:
        """Whether `step` runs the TorchScript functions: int8 parts, and not inside
        `small_ops_on_one_thread` (there the int8 linears switch torch's threads, which a script cannot)."""
        return self.int8 is not None and not int8_linear.linear_threads_raised() and scripted_expert.scripted() is not None

    def step(self, h: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, mask: torch.Tensor,
             rope: tuple[torch.Tensor, torch.Tensor], scale: float, gather: Gather | None = None) -> torch.Tensor:
        """h [B, L, hidden] -> the layer's output; LeRobot's residual order and fp32 attention scores.

        `gather` (self-attention layers, rows in halves): this half's new keys and values -> those of
        the halves its rows may attend to (itself included), in row order; `mask` has their columns."""
        if self.scripted_step():
            return self._scripted(h, prefix_k, prefix_v, mask, rope, scale, gather)
        b, length = h.shape[:2]
        heads, dim = self.heads, self.head_dim
        x = self.project_in(rms_norm(h, self.input_norm))
        if self.cross:
            q = apply_rope(x.view(b, length, heads, dim), *rope)
            k, v = prefix_k, prefix_v
        else:
            # RoPE on q and k at once (same positions): one set of ops for both.
            qk_width = (heads + self.kv_heads) * dim
            qk = apply_rope(x[..., :qk_width].view(b, length, heads + self.kv_heads, dim), *rope)
            q = qk[:, :, :heads]
            new_k = qk[:, :, heads:].transpose(1, 2)
            new_v = x[..., qk_width:].view(b, length, self.kv_heads, dim).transpose(1, 2)
            ks, vs = gather(new_k, new_v) if gather is not None else ([new_k], [new_v])
            k = torch.cat([prefix_k, *ks], dim=2)
            v = torch.cat([prefix_v, *vs], dim=2)
        h = h + self.project_out(gqa_attention(q, k, v, mask, scale))
        gate_up = self.gate_up(rms_norm(h, self.post_norm))
        return h + self.down(self.act(gate_up[..., :self.intermediate]) * gate_up[..., self.intermediate:])

    def _scripted(self, h: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, mask: torch.Tensor,
                  rope: tuple[torch.Tensor, torch.Tensor], scale: float, gather: Gather | None) -> torch.Tensor:
        """`step` through the TorchScript functions: the same ops in the same order, without the GIL."""
        fns = scripted_expert.scripted()
        assert fns is not None and self.int8 is not None
        (p_in, p_out, p_gate_up, p_down), reduce_range = self.int8
        (norm, eps), (post, post_eps) = self.input_norm, self.post_norm
        if self.cross:
            out: torch.Tensor = fns.cross(h, norm, eps, p_in, reduce_range, self.heads, self.head_dim, rope[0], rope[1],
                                          prefix_k, prefix_v, mask, scale, p_out, post, post_eps, p_gate_up,
                                          self.intermediate, p_down)
            return out
        q, new_k, new_v = fns.self_in(h, norm, eps, p_in, reduce_range, self.heads, self.kv_heads, self.head_dim,
                                      rope[0], rope[1])
        ks, vs = gather(new_k, new_v) if gather is not None else ([new_k], [new_v])
        out = fns.self_out(h, q, prefix_k, prefix_v, ks, vs, mask, scale, p_out, post, post_eps, p_gate_up,
                           self.intermediate, p_down, reduce_range)
        return out


def int8_parts(linears: tuple[Any, Any, Any, Any], act: Any) -> tuple[tuple[Any, Any, Any, Any], bool] | None:
    """The layer's packed int8 weights and reduce_range where all four projections are plain
    `Int8Linear`s with one activation width and the MLP's activation is SiLU (what the script computes)."""
    if not all(type(lin) is Int8Linear for lin in linears) or len({lin.activation_bits for lin in linears}) != 1:
        return None
    probe = torch.linspace(-6.0, 6.0, 64)
    try:
        is_silu = torch.equal(act(probe), torch.nn.functional.silu(probe))
    except Exception:
        return None
    if not is_silu:
        return None
    return (linears[0].packed, linears[1].packed, linears[2].packed, linears[3].packed), linears[0].reduce_range


def mask_columns(prefix_len: int, rows: list[tuple[int, int]]) -> torch.Tensor:
    """Mask columns: the prefix's (none for the prefix pass itself), then those of `rows` (row ranges after
    the prefix), in order."""
    return torch.cat([torch.arange(prefix_len), *(prefix_len + torch.arange(a, b) for a, b in rows)])


Gather = Callable[[torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor]]]


class KVExchange:
    """Where the halves of one layer stack (a denoise step, or the prefix pass) hand each other their
    self-attention layers' new keys and values: a slot per layer and half (a fast half never overwrites
    what a slow one has still to read; the prefix pass reads every slot afterwards for the KV cache).

    A half waits only for the halves whose rows its own rows may attend to (`needs`, from the chunk's
    mask). SmolVLA's action tokens attend causally, so the first half needs nobody's and never waits;
    the second waits only when it has caught up with the first. A barrier per layer instead made each
    half wait for the other at all eight self-attention layers of a step, paying every difference in
    the two cores' speed (2-core AMD EPYC, AVX2 kernels: 3.5-7 ms a step per half). Full-size SmolVLA's
    ten steps, interleaved: the same when the machine is quiet (343 / 335 ms), 484 -> 439 ms beside a
    process busy a quarter of a core (the app's engine, simulator and UI are such); the same actions
    to the bit. The first half also attends over the prefix and its own rows only, not over masked ones.
    """

    def __init__(self, layers: int, needs: list[list[int]]) -> None:
        self.needs = needs
        self.slots: list[list[tuple[torch.Tensor, torch.Tensor] | None]] = [[None] * len(needs) for _ in range(layers)]
        self.ready = threading.Condition()

    def gather(self, layer: int, half: int, barrier: threading.Barrier) -> Gather:
        """`barrier`: run_halves' own, broken when the other half failed (then this one stops too)."""
        def swap(k: torch.Tensor, v: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            slot, needs = self.slots[layer], self.needs[half]
            with self.ready:
                slot[half] = (k, v)
                self.ready.notify_all()
                while any(slot[j] is None for j in needs):
                    if barrier.broken:
                        raise threading.BrokenBarrierError
                    self.ready.wait(0.05)
            kvs = [slot[j] for j in needs]
            return [kv[0] for kv in kvs if kv is not None], [kv[1] for kv in kvs if kv is not None]
        return swap


def attention_needs(allowed: torch.Tensor, rows: list[tuple[int, int]], prefix_len: int) -> list[list[int]]:
    """For each half: the halves (itself included, in row order) whose rows some of its rows may attend
    to, from the boolean [B, L, P + L] mask."""
    suffix = allowed[:, :, prefix_len:]
    return [[j for j, (c, d) in enumerate(rows) if j == i or bool(suffix[:, a:b, c:d].any())]
            for i, (a, b) in enumerate(rows)]
