"""How many activation bits the int8 kernel of a quantized engine takes here: probed, not read from the flags.

fbgemm and oneDNN multiply u8 activations by s8 weights. With VNNI (`vpdpbusd`) or AMX they accumulate
in int32. Without it (AVX2, or AVX-512 without VNNI) they use `vpmaddubsw`, which sums pairs of products
in int16 and saturates when activations use all 8 bits (2 x 255 x 127 > 32767): the suite's 256-wide
linear was 0.157 off the exact quantized product on the AVX2-only EPYC (0.1565 on the AVX-512 EPYC with
its kernels capped to AVX2), against < 0.002 with 7-bit activations (reduce_range).

Which kernel runs is each library's own choice, and they choose apart: from the CPU, and from their own
caps (FBGEMM_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA). Measured on the AVX-512 VNNI EPYC: with
ONEDNN_MAX_CPU_ISA=AVX512_CORE (AVX-512 without VNNI) oneDNN's kernel saturates while fbgemm's, on the
same CPU, does not. So each engine is asked once, with a product where every pair of products saturates
an int16: the answer is exact (63) or far off (32.4 where it saturates). 1.5-1.8 ms on the EPYC, once per
engine and process; where the probe cannot run, 7 bits (never saturates, always correct).
"""

from __future__ import annotations

import functools
import threading

import torch

_WIDTH = 64  # one product of 63 pairs of 255 x 127 (the first activation is 0: the range starts there)
_TOLERANCE = 0.02  # relative; a saturating kernel is ~50 % off, a rounding one ~1 %

_lock = threading.Lock()


def engine_name(engine: str | None) -> str:
    """The engine that packs weights when `engine` is None: torch's current default (x86 on x86-64)."""
    return engine or str(torch.backends.quantized.engine)


def saturates(engine: str | None = None) -> bool:
    """Whether `engine`'s int8 kernel loses precision on full 8-bit activations (int16 pair sums)."""
    return _probe(engine_name(engine))


def activation_bits(engine: str | None = None) -> int:
    """8 where `engine`'s kernel accumulates u8 x s8 products exactly, 7 where it would saturate."""
    return 7 if saturates(engine) else 8


@functools.cache
def _probe(engine: str) -> bool:
    try:
        with _lock:  # the engine is one process-wide setting that linear_prepack reads
            previous = torch.backends.quantized.engine
            try:
                torch.backends.quantized.engine = engine
                weight = torch.quantize_per_channel(
                    torch.ones(8, _WIDTH), torch.full((8,), 1 / 127, dtype=torch.float64),
                    torch.zeros(8, dtype=torch.int64), axis=0, dtype=torch.qint8)
                packed = torch.ops.quantized.linear_prepack(weight, None)
            finally:
                torch.backends.quantized.engine = previous
        x = torch.ones(1, _WIDTH)
        x[0, 0] = 0.0
        with torch.inference_mode():
            y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
        want = float(_WIDTH - 1)
        return bool(abs(float(y[0, 0]) - want) > _TOLERANCE * want)
    except Exception:  # an engine that cannot run the probe: assume the worst (7 bits are always exact)
        return True


def describe(engines: list[str | None]) -> str:
    """'7-bit', '8-bit' or '8-bit onednn, 7-bit x86' for the engines a model's int8 linears use."""
    bits = {engine_name(e): activation_bits(e) for e in engines}
    if len(set(bits.values())) == 1:
        return f"{next(iter(bits.values()))}-bit"
    return ", ".join(f"{b}-bit {e}" for e, b in sorted(bits.items()))
