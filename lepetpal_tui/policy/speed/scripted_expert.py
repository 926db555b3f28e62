"""The action expert's int8 layer step (and the prefix pass's, policy/speed/prefix_halves.py) as TorchScript
functions: one call per layer part, run without the GIL.

Why: the denoiser runs its 50 action rows in two halves on two Python threads (row_halves.py). Each half
makes ~25 torch calls per layer, 16 layers, 10 flow steps, and every call takes the GIL for its Python
part, so the halves queue behind each other: two halves at once took 1.29-1.31 of one alone (16-layer
int8 stack, 25 rows, one thread each; 2-core Intel Xeon). The TorchScript interpreter runs a function's
ops in C++ with the GIL released: 1.01-1.04 of one alone, and one alone 10-13 % faster. The ten steps of
a chunk (SmolVLA full size, policy process's setting) 486 -> 373 ms, the whole chunk 1029 -> 908 ms, the
same actions to the bit (bench/policy_latency.py; Intel Xeon).

The functions are the same ops in the same order as `decoder_layer.LayerPlan.step` (same rounding).
TorchScript is deprecated in torch 2.x but still shipped; where scripting fails (or torch drops it) the
eager step runs instead (`scripted()` returns None), and the kernel decisions say which one runs.
"""

# No `from __future__ import annotations`: TorchScript reads these functions' annotations as types.

import functools
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from lepetpal_tui.policy.speed import kernel_probe

# An int8 linear's packed weights; TorchScript needs the real class, mypy cannot see it.
if TYPE_CHECKING:
    Packed = Any
else:
    Packed = torch.classes.quantized.LinearPackedParamsBase


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    b, length, heads, dim = q.shape
    kv_heads = k.shape[1]
    qs = q.transpose(1, 2).reshape(b * kv_heads, heads // kv_heads * length, dim)
    scores = torch.baddbmm(mask, qs, k.reshape(b * kv_heads, -1, dim).transpose(1, 2), alpha=scale)
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(b * kv_heads, -1, dim))
    return out.view(b, heads, length, dim).transpose(1, 2).reshape(b, length, heads * dim)


def _linear(x: torch.Tensor, packed: Packed, reduce_range: bool) -> torch.Tensor:
    y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, packed, reduce_range)
    return y


def _attention_out_and_mlp(
    h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
    o: Packed, post_norm: torch.Tensor, post_eps: float,
    gate_up: Packed, intermediate: int,
    down: Packed, reduce_range: bool,
) -> torch.Tensor:
    h = h + _linear(_attention(q, k, v, mask, scale), o, reduce_range)
    gu = _linear(torch.nn.functional.rms_norm(h, [post_norm.shape[0]], post_norm, post_eps), gate_up, reduce_range)
    act = torch.nn.functional.silu(gu[:, :, :intermediate]) * gu[:, :, intermediate:]
    return h + _linear(act, down, reduce_range)


def self_attention_in(
    h: torch.Tensor, norm: torch.Tensor, eps: float, qkv: Packed,
    reduce_range: bool, heads: int, kv_heads: int, dim: int, cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A self-attention layer up to its new keys and values: (q [B, L, H, D], k and v [B, Hkv, L, D])."""
    b, length = h.shape[0], h.shape[1]
    x = _linear(torch.nn.functional.rms_norm(h, [norm.shape[0]], norm, eps), qkv, reduce_range)
    qk_width = (heads + kv_heads) * dim
    qk = _rope(x[:, :, :qk_width].reshape(b, length, heads + kv_heads, dim), cos, sin)
    new_v = x[:, :, qk_width:].reshape(b, length, kv_heads, dim).transpose(1, 2)
    return qk[:, :, :heads], qk[:, :, heads:].transpose(1, 2), new_v


def self_attention_out(
    h: torch.Tensor, q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, ks: list[torch.Tensor],
    vs: list[torch.Tensor], mask: torch.Tensor, scale: float, o: Packed,
    post_norm: torch.Tensor, post_eps: float, gate_up: Packed,
    intermediate: int, down: Packed, reduce_range: bool,
) -> torch.Tensor:
    """The rest of a self-attention layer, given every half's new keys and values (`ks`, `vs`)."""
    k = torch.cat([prefix_k] + ks, dim=2)  # noqa: RUF005 (TorchScript has no [a, *b])
    v = torch.cat([prefix_v] + vs, dim=2)  # noqa: RUF005
    return _attention_out_and_mlp(h, q, k, v, mask, scale, o, post_norm, post_eps, gate_up, intermediate, down,
                                  reduce_range)


def cross_attention_layer(
    h: torch.Tensor, norm: torch.Tensor, eps: float, q_proj: Packed,
    reduce_range: bool, heads: int, dim: int, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor,
    v: torch.Tensor, mask: torch.Tensor, scale: float, o: Packed,
    post_norm: torch.Tensor, post_eps: float, gate_up: Packed,
    intermediate: int, down: Packed,
) -> torch.Tensor:
    """A whole cross-attention layer (its keys and values come from the prefix)."""
    b, length = h.shape[0], h.shape[1]
    x = _linear(torch.nn.functional.rms_norm(h, [norm.shape[0]], norm, eps), q_proj, reduce_range)
    q = _rope(x.reshape(b, length, heads, dim), cos, sin)
    return _attention_out_and_mlp(h, q, k, v, mask, scale, o, post_norm, post_eps, gate_up, intermediate, down,
                                  reduce_range)


class ScriptedExpert(NamedTuple):
    self_in: Any
    self_out: Any
    cross: Any


def _tiny_layer_runs(fns: ScriptedExpert) -> bool:
    """Each function once on a tiny layer (2 query heads, 1 K/V head, head dim 4, width 8): a TorchScript
    that compiles but fails when called shows here, at load, not in the middle of a chunk."""
    def packed(rows: int, cols: int) -> Any:
        w = torch.linspace(-1.0, 1.0, rows * cols).reshape(rows, cols)
        scales = torch.full((rows,), 1.0 / 127, dtype=torch.float64)
        q = torch.quantize_per_channel(w, scales, torch.zeros(rows, dtype=torch.int64), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)

    h, norm = torch.linspace(-1.0, 1.0, 24).reshape(1, 3, 8), torch.ones(8)
    cos, sin = torch.ones(1, 3, 1, 4), torch.zeros(1, 3, 1, 4)
    o, gate_up, down = packed(8, 8), packed(16, 8), packed(8, 8)
    q, k, v = fns.self_in(h, norm, 1e-6, packed(16, 8), False, 2, 1, 4, cos, sin)
    prefix = torch.zeros(1, 1, 2, 4)
    mask = torch.zeros(1, 6, 5)
    out = fns.self_out(h, q, prefix, prefix, [k], [v], mask, 0.5, o, norm, 1e-6, gate_up, 8, down, False)
    cross = fns.cross(h, norm, 1e-6, packed(8, 8), False, 2, 4, cos, sin, prefix, prefix, mask[:, :, :2], 0.5, o,
                      norm, 1e-6, gate_up, 8, down)
    return bool(out.shape == h.shape == cross.shape and torch.isfinite(out).all() and torch.isfinite(cross).all())


@functools.cache
def scripted() -> ScriptedExpert | None:
    """The scripted functions, compiled and tried on a tiny layer once per process (at the load's warm-up
    chunk), or None where TorchScript fails: then the eager step runs (the same math)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x: deprecated, still shipped
            fns = ScriptedExpert(torch.jit.script(self_attention_in), torch.jit.script(self_attention_out),
                                 torch.jit.script(cross_attention_layer))
            with torch.inference_mode():
                works = _tiny_layer_runs(fns)
    except Exception as exc:  # any failure: the eager step is the same math
        kernel_probe.record("action expert layers", f"eager (TorchScript failed: {type(exc).__name__}: {exc})")
        return None
    if not works:
        kernel_probe.record("action expert layers", "eager (TorchScript gave a wrong shape or non-finite values)")
        return None
    kernel_probe.record("action expert layers", "TorchScript (int8, GIL released per layer part)")
    return fns
