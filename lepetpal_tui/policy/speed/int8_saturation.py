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
engine and process; where the probe cannot run, 7 bits (never saturates, always correct; qnnpack
always takes 8, `bits_run`).

A second check asks whether an engine's kernel gives the right product at all once its weights have been
called on another number of rows (`sound`). On aarch64, torch's default engine is onednn, whose dynamic
linear goes to the Arm Compute Library, and there (torch 2.9.1 under QEMU as a Cortex-A76, Neoverse-N1,
A64FX and Cortex-A72, the same figures on each) every call with another row count than the first call's
was 0.41-1.10 off fp32: the first call sets up a GEMM for its rows and later calls reuse it. Our first call is on one row
(int8_linear.settle_first_call), so every later call would have been wrong. qnnpack, the engine torch
used on ARM before, was exact there. An engine that fails is never used: the default falls to the
first sound engine.
"""

from __future__ import annotations

import functools
import threading

import torch

_WIDTH = 64  # one product of 63 pairs of 255 x 127 (the first activation is 0: the range starts there)
_TOLERANCE = 0.02  # relative; a saturating kernel is ~50 % off, a rounding one ~1 %

_lock = threading.Lock()


# The engines that may pack int8 linears, in the order one stands in for an unsound default.
_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")
_SOUND_TOLERANCE = 0.1  # relative to fp32: the product's own rounding is ~0.01-0.03, a wrong kernel 0.4-1.1
_linear_dynamic = torch.ops.quantized.linear_dynamic  # module-level, so a test can stand in a faulty kernel


def engine_name(engine: str | None) -> str:
    """The engine that packs weights when `engine` is None: torch's current default where its kernel is
    sound here (x86 on x86-64), else the first engine that is (qnnpack on aarch64)."""
    return engine or default_engine()


def default_engine() -> str:
    """torch's current quantized engine if its int8 kernel is sound here, else the first sound one (torch's
    own when none is: `int8_linear.int8_supported` then says no)."""
    return _default_for(str(torch.backends.quantized.engine))


@functools.cache
def _default_for(current: str) -> str:
    supported = torch.backends.quantized.supported_engines
    for engine in (current, *(e for e in _ENGINES if e != current and e in supported)):
        if sound(engine):
            return engine
    return current


@functools.cache
def sound(engine: str) -> bool:
    """Whether `engine`'s int8 linear gives the quantized product (within its rounding) on a call with
    other rows than its first call's, as every policy call is (see the module's note)."""
    try:
        generator = torch.Generator().manual_seed(12)
        weight = torch.randn(16, _WIDTH, generator=generator)
        packed = _prepack(engine, weight)
        reduce_range = saturates(engine)
        with torch.inference_mode():
            _linear_dynamic(torch.randn(1, _WIDTH, generator=generator), packed, reduce_range=reduce_range)
            x = torch.randn(3, _WIDTH, generator=generator)
            got = _linear_dynamic(x, packed, reduce_range=reduce_range)
        want = x @ weight.T
        return bool(float((got - want).norm() / want.norm()) < _SOUND_TOLERANCE)
    except Exception:  # an engine that cannot run the check is not used
        return False


def _prepack(engine: str, weight: torch.Tensor) -> object:
    """`weight` quantized symmetric per output channel (as int8_linear does) and packed by `engine`."""
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8).to(torch.float64)
    q = torch.quantize_per_channel(weight, scale, torch.zeros(weight.shape[0], dtype=torch.int64), axis=0,
                                   dtype=torch.qint8)
    with _lock:  # the engine is one process-wide setting that linear_prepack reads
        previous = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = engine
            return torch.ops.quantized.linear_prepack(q, None)
        finally:
            torch.backends.quantized.engine = previous


def saturates(engine: str | None = None) -> bool:
    """Whether `engine`'s int8 kernel loses precision on full 8-bit activations (int16 pair sums)."""
    return _probe(engine_name(engine))


def activation_bits(engine: str | None = None) -> int:
    """8 where `engine`'s kernel accumulates u8 x s8 products exactly, 7 where it would saturate."""
    return bits_run(engine, 7 if saturates(engine) else 8)


# qnnpack quantizes activations to all 8 bits whatever reduce_range asks (torch warns: "qnnpack incorrectly
# ignores reduce_range"). Measured: its product with reduce_range is the 8-bit one to the last bit, 0.022
# off the 7-bit one, on the AMD EPYC and on aarch64 under QEMU. Its kernels sum in int32: 8 bits are exact.
_IGNORES_REDUCE_RANGE = frozenset({"qnnpack"})


def bits_run(engine: str | None, asked: int) -> int:
    """The activation bits `engine`'s kernel really quantizes to when `asked` (7 or 8) are asked for."""
    return 8 if engine_name(engine) in _IGNORES_REDUCE_RANGE else asked


@functools.cache
def _probe(engine: str) -> bool:
    try:
        packed = _prepack(engine, torch.ones(8, _WIDTH))  # every weight 127 after quantizing
        x = torch.ones(1, _WIDTH)
        x[0, 0] = 0.0
        with torch.inference_mode():
            y = _linear_dynamic(x, packed, reduce_range=False)
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
