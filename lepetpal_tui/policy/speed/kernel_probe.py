"""Kernel speeds that the CPU's flags do not tell: timed once per process, on the real shapes, at load.

Why: AVX512-BF16 in the flags does not make torch's bf16 matmuls fast. The vision encoder's attention for
one layer (12 heads, a half's 512 query rows over 1024 keys, head dim 64, one thread; see
`RowHalvesVisionEncoder`), bf16 per-head bmm against fp32 SDPA:
- 2-core AMD EPYC (Zen 4, AVX-512 BF16): 13.5 vs 20 ms, bf16 wins (0.67);
- 2-core Intel Xeon (AVX-512 BF16 and FP16, no AMX exposed to the VM): 31.7 vs 18.5 ms, bf16 loses (1.71):
  bf16 bmm runs at 58 GFLOP/s there, fp32 at 91.
So the choice is measured: a ~40 ms probe the first time the encoder runs (the load's warm-up chunk),
remembered for the process. The gap is wide on both machines; a 10 % margin keeps noise from choosing bf16.
"""

from __future__ import annotations

import functools
import threading
import time

import torch

from lepetpal_tui.policy.speed.cpu_caps import cpu_caps

BF16_MARGIN = 0.9  # bf16 must take at most this share of fp32's time
_REPS = 5

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


@functools.cache
def bf16_attention_pays(rows: int, keys: int, dim: int, threads: int) -> bool:
    """Whether `bf16_attention` beats fp32 SDPA for one head of `rows` queries over `keys` keys on
    `threads` threads (the caller's share). False at once where the CPU has no bf16 dot products."""
    caps = cpu_caps()
    if not caps.bf16_native:
        record("vision attention", f"fp32 (no bf16 dot products on {caps.kind})")
        return False
    g = torch.Generator().manual_seed(0)
    # [batch, heads, rows, dim] as the encoder calls SDPA (3-d inputs miss its flash kernel: 2x slower).
    q, k, v = (torch.randn(1, 1, n, dim, generator=g) for n in (rows, keys, keys))
    qb, kb, vb = (t[0].to(torch.bfloat16) for t in (q * dim**-0.5, k, v))
    saved = torch.get_num_threads()
    fp32_s, bf16_s = [], []
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for rep in range(_REPS + 1):  # interleaved, the first round is a warm-up
                t0 = time.perf_counter()
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
                t1 = time.perf_counter()
                bf16_attention(qb, kb, vb)
                t2 = time.perf_counter()
                if rep:
                    fp32_s.append(t1 - t0)
                    bf16_s.append(t2 - t1)
    finally:
        torch.set_num_threads(saved)
    ratio = min(bf16_s) / max(min(fp32_s), 1e-9)
    pays = ratio <= BF16_MARGIN
    record("vision attention", f"{'bf16' if pays else 'fp32'} (bf16 took {ratio:.3f} of fp32's time, "
                                f"{min(bf16_s) * 1e3:.3f} vs {min(fp32_s) * 1e3:.3f} ms a head)")
    return pays


def record(name: str, text: str) -> None:
    """Remember what a speed choice decided in this process (shown by `decisions`)."""
    with _lock:
        _decisions[name] = text
