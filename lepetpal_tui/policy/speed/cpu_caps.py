"""What this processor can do fast, read once: the one place that chooses the CPU inference path.

Measured facts behind the choices (real SmolVLA linears, 2-core AMD EPYC VMs):
- int8 (fbgemm, u8 activations x s8 weights) multiplies with VNNI (`vpdpbusd`, int32 accumulation) on
  AVX-512 VNNI machines. Without it fbgemm sums pairs of products in int16, which saturates on 8-bit
  activations: how many bits each engine's kernel takes is probed, not read from here
  (policy/speed/int8_saturation.py). Tried instead of 7-bit activations: 7-bit weights with 8-bit
  activations (2 x 255 x 63 fits too). Per linear it is closer to fp32 (0.013 vs 0.019), but over a
  whole chunk the actions were 2.8-3.2 degrees off fp32 against 1.1-1.4 with 7-bit activations: a
  weight's rounding error is the same on every call, so it adds up over the ten flow steps, where
  per-call activation rounding averages out.
- bf16 matmuls are only fast with bf16 dot products in hardware (AVX512-BF16, AMX, ARMv8.6 BF16);
  elsewhere they are emulated: 17 GFLOP/s against 130 for fp32 on the AVX2-only EPYC.
Everything here is a pure function of the CPU's feature report, the kernel libraries' own ISA caps and
torch's own CPU report, so the choice is instant and the same on every start. The features are read as
the kernels read them: torch's `torch.cpu.get_capabilities()` (cpuinfo's CPUID on x86, the kernel's
hwcaps on ARM) where torch is there, Linux's hwcaps on ARM where torch is older than 2.10 (PyPI's CPU
builds for aarch64), /proc/cpuinfo otherwise (the UI process). The two differ under an emulator: QEMU's
user mode reports an AVX2-only CPU to its programs while /proc/cpuinfo is the host's AVX-512 one, and
fbgemm, oneDNN and ATen all run AVX2 kernels there; an emulated aarch64 reads the x86 host's.

The caps: oneDNN (ONEDNN_MAX_CPU_ISA), fbgemm (FBGEMM_ENABLE_INSTRUCTIONS) and ATen
(ATEN_CPU_CAPABILITY) each read a variable that keeps their kernels below an ISA, to debug or to run a
smaller CPU's kernels on a bigger one (the suite runs its int8 checks with AVX2 kernels that way). A
feature above the lowest cap set is taken out of the flags, so no choice here counts on a kernel that
will not run.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

# The flags that change a decision; both x86 (/proc/cpuinfo "flags") and ARM ("Features") spellings.
RELEVANT_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "bf16", "i8mm", "sve",
)


@dataclass(frozen=True)
class CpuCaps:
    model: str
    arch: str  # "x86_64", "aarch64", "arm64", ...
    flags: frozenset[str]
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    capped_by: str = ""  # the kernel libraries' ISA caps that took flags out ("ONEDNN_MAX_CPU_ISA=AVX2"), or ""
    not_reported: frozenset[str] = frozenset()  # in /proc/cpuinfo but not reported by the CPU to its programs

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i686", "x86")

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64") or self.arch.lower().startswith("arm")

    @property
    def int8_vnni(self) -> bool:
        """u8 x s8 dot products accumulated in int32 by the kernel fbgemm picks (AVX-512 VNNI or AMX).

        AVX-VNNI (the 256-bit form on Alder Lake / N100) is not used by fbgemm's kernels, so it does not count.
        """
        return bool(self.flags & {"avx512_vnni", "amx_int8"})

    @property
    def int8_amx(self) -> bool:
        """AMX tile int8 multiplies (Sapphire Rapids and later Xeons): oneDNN uses them, fbgemm does not."""
        return self.is_x86 and "amx_int8" in self.flags

    @property
    def bf16_native(self) -> bool:
        """bf16 dot products in hardware: bf16 matmuls beat fp32 only then."""
        if self.is_x86:
            return bool(self.flags & {"avx512_bf16", "amx_bf16"})
        if self.is_arm:
            return "bf16" in self.flags
        return False

    @property
    def kind(self) -> str:
        """A short name for a class of CPU (bench/results keeps one result per kind)."""
        if self.is_x86:
            if "avx512f" in self.flags:
                parts = ["x86-avx512"]
                if self.int8_vnni:
                    parts.append("vnni")
                if self.bf16_native:
                    parts.append("bf16")
                if "amx_tile" in self.flags:
                    parts.append("amx")
                return "-".join(parts)
            if "avx2" in self.flags:
                return "x86-avx2" + ("-avxvnni" if "avx_vnni" in self.flags else "")
            return "x86-baseline"
        if self.is_arm:
            return "arm64" + ("-dotprod" if "asimddp" in self.flags else "") + ("-bf16" if self.bf16_native else "")
        return self.arch or "unknown"

    def describe(self) -> str:
        """One line for logs and benchmarks: model, kind, the flags that matter, torch's own view."""
        flags = " ".join(f for f in RELEVANT_FLAGS if f in self.flags) or "none of interest"
        capped = f"; kernels capped by {self.capped_by}" if self.capped_by else ""
        absent = (f"; /proc/cpuinfo also lists {' '.join(sorted(self.not_reported))}, which the CPU does not "
                  "report to programs (an emulator?)") if self.not_reported else ""
        return f"{self.model} [{self.kind}; flags: {flags}; torch: {self.torch_capability}{capped}{absent}]"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) from the text of /proc/cpuinfo (x86 "flags", ARM "Features")."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, frozenset(flags)


# Each flag's rank, and each cap value's: a cap keeps the flags ranked at or below it.
def _flag_rank(flag: str) -> float:
    if flag.startswith("amx"):
        return 6
    ranks = {"avx512_fp16": 5, "avx512_bf16": 4, "avx512_vnni": 3, "avx_vnni": 1.5, "avx2": 1, "fma": 1}
    if flag in ranks:
        return ranks[flag]
    return 2 if flag.startswith("avx512") else 0


_CAP_RANKS: dict[str, dict[str, float]] = {
    "ONEDNN_MAX_CPU_ISA": {
        "SSE41": 0, "AVX": 0, "AVX2": 1, "AVX2_VNNI": 1.5, "AVX2_VNNI_2": 1.5, "AVX512_CORE": 2,
        "AVX512_CORE_VNNI": 3, "AVX512_CORE_BF16": 4, "AVX512_CORE_FP16": 5, "AVX10_1_512": 5,
    },
    "FBGEMM_ENABLE_INSTRUCTIONS": {"AVX2": 1, "AVX512": 2, "AVX512_256": 2, "AVX512_E1": 3, "AVX512_E1_256": 3},
    "ATEN_CPU_CAPABILITY": {"DEFAULT": 0, "AVX2": 1},
}
_CAP_ALIASES = {"DNNL_MAX_CPU_ISA": "ONEDNN_MAX_CPU_ISA"}  # oneDNN's older name


def kernel_caps(environ: Mapping[str, str]) -> tuple[float | None, str]:
    """(the lowest flag rank the kernel libraries' caps allow, those caps as text); (None, "") when none is
    set, or only to values that take nothing out (ALL, the AMX levels, an unknown value)."""
    lowest: float | None = None
    named: list[str] = []
    for var in (*_CAP_RANKS, *_CAP_ALIASES):
        value = environ.get(var, "").strip().upper()
        rank = _CAP_RANKS[_CAP_ALIASES.get(var, var)].get(value)
        if rank is None:
            continue
        named.append(f"{var}={value}")
        lowest = rank if lowest is None else min(lowest, rank)
    return lowest, " ".join(named)


# torch.cpu.get_capabilities() names -> the /proc/cpuinfo spellings used here.
_TORCH_FEATURES = {
    "avx2": "avx2", "fma3": "fma", "avx512_f": "avx512f", "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16", "avx_vnni": "avx_vnni",
    "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
    "neon": "asimd", "dot": "asimddp", "bf16": "bf16", "i8mm": "i8mm", "sve": "sve",
}


_ARM_FLAGS = frozenset({"asimd", "asimddp", "bf16", "i8mm", "sve"})
_X86_FLAGS = frozenset(RELEVANT_FLAGS) - _ARM_FLAGS


def reported_by_cpu(caps: CpuCaps, features: Mapping[str, object] | None) -> CpuCaps:
    """`caps` with the flags that matter here set as the CPU reports them to programs (`features`:
    `torch.cpu.get_capabilities()`, or Linux's hwcaps on ARM), which is what the kernel libraries go by;
    unchanged without a report. Another architecture's flags (an aarch64 process under qemu-user on an x86
    host reads the host's /proc/cpuinfo) are never this CPU's."""
    if not features:
        return caps
    foreign = _X86_FLAGS if caps.is_arm else _ARM_FLAGS if caps.is_x86 else frozenset()
    known = {ours for theirs, ours in _TORCH_FEATURES.items() if theirs in features} | foreign
    reported = {ours for theirs, ours in _TORCH_FEATURES.items() if features.get(theirs) is True}
    return replace(caps, flags=frozenset((caps.flags - known) | reported),
                   not_reported=frozenset((caps.flags & known) - reported))


def _torch_features() -> Mapping[str, object] | None:
    try:
        import torch

        return dict(torch.cpu.get_capabilities())
    except Exception:  # no torch (the UI process), or one older than get_capabilities (2.10)
        return None


# Linux's aarch64 hwcaps (arch/arm64/include/uapi/asm/hwcap.h), in torch's spelling: (auxv entry, bit).
# AT_HWCAP is 16, AT_HWCAP2 26. torch's own report reads the same words on ARM (torch >= 2.10).
_ARM_HWCAPS = {"neon": (16, 1), "dot": (16, 20), "sve": (16, 22), "i8mm": (26, 13), "bf16": (26, 14)}


def arm_hwcap_features(hwcap: int, hwcap2: int) -> dict[str, bool]:
    """The features that matter here from the two hwcap words, as `torch.cpu.get_capabilities()` names them."""
    words = {16: hwcap, 26: hwcap2}
    return {name: bool(words[entry] >> bit & 1) for name, (entry, bit) in _ARM_HWCAPS.items()}


def _arm_hwcaps() -> dict[str, bool] | None:
    """What Linux reports to this aarch64 process (getauxval), for a torch without its own report."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("aarch64", "arm64"):
        return None
    try:
        import ctypes

        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        return arm_hwcap_features(int(getauxval(16)), int(getauxval(26)))
    except (OSError, AttributeError):  # no C library to ask: /proc/cpuinfo stands
        return None


def _torch_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # no torch (the UI process) or an old one
        return "unknown"


def _arm_model(text: str) -> str:
    part = re.search(r"CPU part\s*:\s*(0x[0-9a-f]+)", text)
    return f"ARM CPU part {part.group(1)}" if part else "ARM CPU"


def _darwin_features() -> tuple[str, frozenset[str]]:
    """Apple silicon has no /proc/cpuinfo: sysctl names the chip and its optional features."""
    import subprocess

    def sysctl(name: str) -> str:
        try:
            out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    flags = {"asimd"}
    if sysctl("hw.optional.arm.FEAT_DotProd") == "1":
        flags.add("asimddp")
    if sysctl("hw.optional.arm.FEAT_BF16") == "1":
        flags.add("bf16")
    if sysctl("hw.optional.arm.FEAT_I8MM") == "1":
        flags.add("i8mm")
    return sysctl("machdep.cpu.brand_string"), frozenset(flags)


@functools.cache
def cpu_caps() -> CpuCaps:
    """This machine's capabilities (cached for the process)."""
    arch = platform.machine() or "unknown"
    text = ""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        try:
            text = info.read_text(errors="replace")
        except OSError:
            text = ""
    model, flags = parse_cpuinfo(text)
    if not text and platform.system() == "Darwin":
        model, flags = _darwin_features()
    if not model:
        model = (_arm_model(text) if "CPU part" in text else platform.processor()) or arch
    caps = CpuCaps(model=model, arch=arch, flags=flags, torch_capability=_torch_capability())
    caps = reported_by_cpu(caps, _torch_features() or _arm_hwcaps())
    if caps.is_arm and caps.not_reported & _X86_FLAGS:  # the model name is the x86 host's too
        caps = replace(caps, model=f"{arch} CPU (/proc/cpuinfo shows an x86 host's)")
    return capped(caps, os.environ)


def capped(caps: CpuCaps, environ: Mapping[str, str]) -> CpuCaps:
    """`caps` without the flags the kernel libraries' caps in `environ` keep their kernels from."""
    rank, capped_by = kernel_caps(environ)
    if rank is None:
        return caps
    return replace(caps, flags=frozenset(f for f in caps.flags if _flag_rank(f) <= rank), capped_by=capped_by)
