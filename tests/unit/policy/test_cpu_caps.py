"""The CPU path follows the processor's flags: 7-bit int8 activations without VNNI, bf16 only when native."""

from __future__ import annotations

import pytest

from lepetpal_tui.policy.speed.cpu_caps import CpuCaps, cpu_caps, parse_cpuinfo

EPYC_AVX2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx fma avx2 bmi2\n"
EPYC_AVX512 = ("model name\t: AMD EPYC 9R14\nflags\t\t: avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n")
N100 = "model name\t: Intel(R) N100\nflags\t\t: avx avx2 fma avx_vnni\n"
SAPPHIRE = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
PI5 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n"


def caps(text: str, arch: str = "x86_64") -> CpuCaps:
    model, flags = parse_cpuinfo(text)
    return CpuCaps(model=model, arch=arch, flags=flags, torch_capability="test")


@pytest.mark.parametrize(
    ("text", "arch", "kind", "bits", "bf16"),
    [
        (EPYC_AVX2, "x86_64", "x86-avx2", 7, False),
        (EPYC_AVX512, "x86_64", "x86-avx512-vnni-bf16", 8, True),
        (N100, "x86_64", "x86-avx2-avxvnni", 7, False),  # fbgemm has no AVX-VNNI kernels
        (SAPPHIRE, "x86_64", "x86-avx512-vnni-bf16-amx", 8, True),
        (PI5, "aarch64", "arm64-dotprod", 8, False),  # qnnpack accumulates in int32
    ],
)
def test_path_follows_the_flags(text: str, arch: str, kind: str, bits: int, bf16: bool) -> None:
    c = caps(text, arch)
    assert (c.kind, c.int8_activation_bits, c.bf16_native) == (kind, bits, bf16)
    assert kind in c.describe()


@pytest.mark.parametrize(("text", "amx"), [(SAPPHIRE, True), (EPYC_AVX512, False), (N100, False), (EPYC_AVX2, False)])
def test_amx_int8_is_read_from_the_flags(text: str, amx: bool) -> None:
    assert caps(text).int8_amx is amx


def test_avx512_without_vnni_still_uses_seven_bits() -> None:
    c = caps("model name\t: Xeon Skylake\nflags\t\t: avx2 avx512f avx512bw\n")
    assert c.int8_activation_bits == 7 and not c.bf16_native and c.kind == "x86-avx512"


def test_this_machine_is_described() -> None:
    c = cpu_caps()
    assert c.model and c.kind and c.torch_capability
    assert c.int8_activation_bits in (7, 8)
