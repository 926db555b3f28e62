"""Kernel speeds that the CPU's flags do not tell: timed once per process, on the real shapes, at load.

Why: AVX512-BF16 in the flags does not make torch's bf16 kernels fast, nor tell which bf16 kernel is.
The vision encoder's attention for one layer (12 heads, a half's 512 query rows over 1024 keys, head
dim 64, one thread; see `RowHalvesVisionEncoder`), fp32 SDPA / bf16 per-head bmm / bf16 SDPA:
- 2-core AMD EPYC (Zen 4, AVX-512 BF16): 20 / 13.5 ms / not timed there: per-head bf16 wins;
- 2-core Intel Xeon (AVX-512 BF16 and FP16, no AMX exposed to the VM): 18.5 / 31.7 / 25.0 ms: fp32 wins
  (bf16 matmuls run at 58 GFLOP/s there, fp32 at 91);
- 2-core Intel Xeon with AMX (amx_bf16, amx_int8): 13.8 / 13.4 / 5.8 ms: bf16 SDPA wins (0.42 of
  fp32's time, 0.56 with oneDNN's AMX masked; the per-head form is held back by a 10 ms softmax over bf16
  scores).
So the choice is measured: a probe (71 ms on the Intel Xeon with AMX; fp32 SDPA, the slowest of the three,
takes most of it) the first time the encoder runs (the load's warm-up
chunk), remembered for the process. The gaps are wide; a 10 % margin keeps noise from choosing bf16.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import torch

from lepetpal_tui.policy.speed.cpu_caps import cpu_caps

BF16_MARGIN = 0.9  # a bf16 kernel must take at most this share of fp32's time
_REPS = 5
_PROBE_HEADS = 4  # of the layer's heads: the kernels' time grows linearly with heads, the probe's need not

# The vision attention kernels, by name: what `vision_attention_kernel` chooses among.
FP32_SDPA = "fp32-sdpa"
BF16_SDPA = "bf16-sdpa"
BF16_HEADS = "bf16-heads"
ATTENTION_KERNELS = (FP32_SDPA, BF16_SDPA, BF16_HEADS)

_decisions: dict[str, str] = {}
_lock = threading.Lock()


def decisions() -> dict[str, str]:
    """What the probes decided in this process, and the times behind it (for logs and benchmarks)."""
    with _lock:
        return dict(_decisions)


def bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q @ k^T) @ v for q [N, Lq, D] (already scaled), k and v [N, L, D], all bf16; one head at
    a time, so one head's scores (1-2 MB in bf16) stay in cache for the softmax (which computes in fp32
    internally). Scores and probabilities are rounded to bf16: the output differs from fp32 by ~1% of
    its range on random data, below the int8 error of the linears around it."""
    out = torch.empty_like(q)
    kt = k.transpose(1, 2)
    for i in range(q.shape[0]):
        torch.bmm(torch.softmax(torch.bmm(q[i:i + 1], kt[i:i + 1]), dim=-1), v[i:i + 1], out=out[i:i + 1])
    return out


def attention(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q [B, H, Lq, D] over k, v [B, H, L, D] with `kernel`; k and v are already in the
    kernel's dtype (bf16 for the bf16 kernels), q may be fp32 (a view is fine). Returns q's dtype."""
    if kernel == FP32_SDPA:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    batch, heads, rows, dim = q.shape
    if kernel == BF16_SDPA:
        out = torch.nn.functional.scaled_dot_product_attention(q.to(torch.bfloat16), k, v, scale=scale)
    elif kernel == BF16_HEADS:
        qs = torch.mul(q, scale).to(torch.bfloat16, memory_format=torch.contiguous_format)
        flat = (batch * heads, -1, dim)
        out = bf16_attention(qs.view(flat), k.reshape(flat), v.reshape(flat)).view(batch, heads, rows, dim)
    else:
        raise ValueError(f"unknown attention kernel {kernel!r} (one of {', '.join(ATTENTION_KERNELS)})")
    return out.to(q.dtype)


def kernel_dtype(kernel: str) -> torch.dtype:
    """The dtype `kernel` wants its keys and values in."""
    return torch.float32 if kernel == FP32_SDPA else torch.bfloat16


@functools.cache
def vision_attention_kernel(rows: int, keys: int, dim: int, heads: int, threads: int) -> str:
    """The fastest of ATTENTION_KERNELS for `heads` heads of `rows` queries over `keys` keys on `threads`
    threads (the caller's share), timed here; a bf16 kernel only if it takes at most BF16_MARGIN of fp32
    SDPA's time. fp32 at once where the CPU has no bf16 dot products."""
    caps = cpu_caps()
    if not caps.bf16_native:
        record("vision attention", f"{FP32_SDPA} (no bf16 dot products on {caps.kind})")
        return FP32_SDPA
    n = max(1, min(heads, _PROBE_HEADS))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, r, dim, generator=g) for r in (rows, keys, keys))
    kb, vb = k.to(torch.bfloat16), v.to(torch.bfloat16)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        FP32_SDPA: lambda: attention(FP32_SDPA, q, k, v, dim**-0.5),
        BF16_SDPA: lambda: attention(BF16_SDPA, q, kb, vb, dim**-0.5),
        BF16_HEADS: lambda: attention(BF16_HEADS, q, kb, vb, dim**-0.5),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for rep in range(_REPS + 1):  # interleaved, the first round is a warm-up
                for name, run in runs.items():
                    t0 = time.perf_counter()
                    run()
                    if rep:
                        times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    best = {name: min(ts) for name, ts in times.items()}
    fp32_s = max(best[FP32_SDPA], 1e-9)
    share = {name: best[name] / fp32_s for name in (BF16_SDPA, BF16_HEADS)}
    fastest = min(share, key=lambda name: share[name])
    chosen = fastest if share[fastest] <= BF16_MARGIN else FP32_SDPA
    record("vision attention", f"{chosen} (of fp32's time: {BF16_SDPA} {share[BF16_SDPA]:.3f}, "
                               f"{BF16_HEADS} {share[BF16_HEADS]:.3f}; {FP32_SDPA} {fp32_s * 1e3:.3f} ms "
                               f"for {n} heads)")
    return chosen


def record(name: str, text: str) -> None:
    """Remember what a speed choice decided in this process (shown by `decisions`)."""
    with _lock:
        _decisions[name] = text
