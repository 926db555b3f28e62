"""The CPU path follows the processor's flags (and the kernel libraries' ISA caps): bf16 only when native."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from lepetpal_tui.policy.speed.cpu_caps import (
    CpuCaps,
    _arm_hwcaps,
    arm_hwcap_features,
    capped,
    cpu_caps,
    parse_cpuinfo,
    reported_by_cpu,
)

EPYC_AVX2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx fma avx2 bmi2\n"
EPYC_AVX512 = ("model name\t: AMD EPYC 9R14\nflags\t\t: avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n")
N100 = "model name\t: Intel(R) N100\nflags\t\t: avx avx2 fma avx_vnni\n"
SAPPHIRE = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
PI5 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n"


def caps(text: str, arch: str = "x86_64") -> CpuCaps:
    model, flags = parse_cpuinfo(text)
    return CpuCaps(model=model, arch=arch, flags=flags, torch_capability="test")


@pytest.mark.parametrize(
    ("text", "arch", "kind", "vnni", "bf16"),
    [
        (EPYC_AVX2, "x86_64", "x86-avx2", False, False),
        (EPYC_AVX512, "x86_64", "x86-avx512-vnni-bf16", True, True),
        (N100, "x86_64", "x86-avx2-avxvnni", False, False),  # fbgemm has no AVX-VNNI kernels
        (SAPPHIRE, "x86_64", "x86-avx512-vnni-bf16-amx", True, True),
        (PI5, "aarch64", "arm64-dotprod", False, False),
    ],
)
def test_path_follows_the_flags(text: str, arch: str, kind: str, vnni: bool, bf16: bool) -> None:
    c = caps(text, arch)
    assert (c.kind, c.int8_vnni, c.bf16_native) == (kind, vnni, bf16)
    assert kind in c.describe()


@pytest.mark.parametrize(("text", "amx"), [(SAPPHIRE, True), (EPYC_AVX512, False), (N100, False), (EPYC_AVX2, False)])
def test_amx_int8_is_read_from_the_flags(text: str, amx: bool) -> None:
    assert caps(text).int8_amx is amx


def test_avx512_without_vnni_is_its_own_kind() -> None:
    c = caps("model name\t: Xeon Skylake\nflags\t\t: avx2 avx512f avx512bw\n")
    assert not c.int8_vnni and not c.bf16_native and c.kind == "x86-avx512"


def test_this_machine_is_described() -> None:
    c = cpu_caps()
    machine = platform.machine().lower()
    family = "x86-" if machine in ("x86_64", "amd64") else "arm64" if machine in ("aarch64", "arm64") else machine
    assert c.kind.startswith(family), (c.kind, machine)
    assert c.torch_capability and c.model
    assert c.kind in c.describe()


@pytest.mark.parametrize(
    ("environ", "kind", "capped_by"),
    [
        ({}, "x86-avx512-vnni-bf16-amx", ""),
        ({"ONEDNN_MAX_CPU_ISA": "avx2"}, "x86-avx2", "ONEDNN_MAX_CPU_ISA=AVX2"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "x86-avx512-vnni-bf16", "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"),
        ({"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512"}, "x86-avx512", "FBGEMM_ENABLE_INSTRUCTIONS=AVX512"),
        # The lowest cap of several wins; an unknown value or ALL takes nothing out.
        ({"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1"},
         "x86-avx2", "FBGEMM_ENABLE_INSTRUCTIONS=AVX512_E1 ATEN_CPU_CAPABILITY=AVX2"),
        ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI", "ONEDNN_MAX_CPU_ISA": "bogus"}, "x86-avx512-vnni",
         "DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI"),
    ],
)
def test_kernel_library_caps_take_flags_out(environ: dict[str, str], kind: str, capped_by: str) -> None:
    """A cap set for oneDNN, fbgemm or ATen keeps their kernels below an ISA: the choices must not count on
    what is above it (bf16 dot products, AMX), whatever /proc/cpuinfo says."""
    c = capped(caps(SAPPHIRE), environ)
    assert (c.kind, c.capped_by) == (kind, capped_by)
    assert ("capped by" in c.describe()) is bool(capped_by)
    assert c.int8_amx is (not capped_by)


def test_caps_leave_arm_flags_alone() -> None:
    c = capped(caps(PI5, "aarch64"), {"ATEN_CPU_CAPABILITY": "default"})
    assert c.kind == "arm64-dotprod" and c.capped_by == "ATEN_CPU_CAPABILITY=DEFAULT"


# torch.cpu.get_capabilities() as QEMU's user mode (TCG) answers it on that AVX-512 host: AVX2, no AVX-512.
QEMU_TCG = {"avx2": True, "fma3": True, "avx512_f": False, "avx512_vnni": False, "avx512_bf16": False,
            "avx_vnni": False, "amx_tile": False, "amx_int8": False, "amx_bf16": False, "sse4_2": True}


def test_the_cpus_own_report_wins_over_proc_cpuinfo() -> None:
    """Under an emulator /proc/cpuinfo is the host's while the kernels see the emulated CPU: the path and the
    kind follow what the kernels see, and the description says what was dropped."""
    c = reported_by_cpu(caps(EPYC_AVX512), QEMU_TCG)
    assert (c.kind, c.int8_vnni, c.bf16_native) == ("x86-avx2", False, False)
    assert c.not_reported == {"avx512f", "avx512_vnni", "avx512_bf16"}
    assert "does not report" in c.describe() and "avx512_vnni" in c.describe()


def test_a_feature_missing_from_proc_cpuinfo_is_taken_from_the_report() -> None:
    c = reported_by_cpu(caps("model name\t: ARM CPU\n", "aarch64"), {"neon": True, "dot": True, "bf16": True})
    assert (c.kind, c.bf16_native, c.not_reported) == ("arm64-dotprod-bf16", True, frozenset())


@pytest.mark.parametrize("features", [None, {}])
def test_without_a_report_proc_cpuinfo_stands(features: dict[str, object] | None) -> None:
    assert reported_by_cpu(caps(SAPPHIRE), features) == caps(SAPPHIRE)


def test_caps_apply_after_the_report() -> None:
    c = capped(reported_by_cpu(caps(SAPPHIRE), {"avx2": True, "amx_tile": True}), {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert c.kind == "x86-avx2" and not c.int8_amx


# Linux's aarch64 hwcap words for a Cortex-A76 (fp asimd ... asimddp; no SVE, no I8MM, no BF16) and for
# QEMU's `-cpu max` (SVE, I8MM and BF16 too), as getauxval(AT_HWCAP) / getauxval(AT_HWCAP2) return them.
A76_HWCAPS = (0b1_0001_1111_1111_1111_1111, 0)
MAX_HWCAPS = (A76_HWCAPS[0] | 1 << 22, 1 << 13 | 1 << 14)


@pytest.mark.parametrize(("words", "kind", "bf16"), [
    (A76_HWCAPS, "arm64-dotprod", False),
    (MAX_HWCAPS, "arm64-dotprod-bf16", True),
    ((0b11, 0), "arm64", False),  # a Cortex-A72 (Raspberry Pi 4): no dot products
])
def test_arm_hwcaps_decide_the_path(words: tuple[int, int], kind: str, bf16: bool) -> None:
    c = reported_by_cpu(caps("", "aarch64"), arm_hwcap_features(*words))
    assert (c.kind, c.bf16_native, "sve" in c.flags) == (kind, bf16, words == MAX_HWCAPS)


def test_an_arm_process_on_an_x86_hosts_proc_cpuinfo_keeps_only_arm_flags() -> None:
    """qemu-aarch64 on an x86 host: /proc/cpuinfo is the host's; the hwcaps are the emulated CPU's."""
    c = reported_by_cpu(caps(EPYC_AVX512, "aarch64"), arm_hwcap_features(*A76_HWCAPS))
    assert c.kind == "arm64-dotprod" and not c.flags & {"avx2", "avx512f", "avx512_vnni"}
    assert c.not_reported == {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert "an emulator?" in c.describe()


@pytest.mark.skipif(platform.machine().lower() not in ("aarch64", "arm64") or platform.system() != "Linux",
                    reason="Linux on aarch64")
def test_this_arm_cpus_hwcaps_are_read() -> None:
    features = _arm_hwcaps()
    assert features is not None and features["neon"]  # every aarch64 Linux CPU has Advanced SIMD
    _, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    if "asimd" in flags:  # /proc/cpuinfo is this CPU's own (not an x86 host's under an emulator): they agree
        assert {ours for theirs, ours in (("dot", "asimddp"), ("bf16", "bf16"), ("sve", "sve"))
                if features[theirs]} == flags & {"asimddp", "bf16", "sve"}
