"""What every benchmark prints and stores beside its figures: the CPU (model, kind, ISA flags) it ran on.

Results go to bench/results/<vendor>-<cpu kind>/<bench>.json (kinds from lepetpal_tui.policy.speed.cpu_caps,
e.g. amd-x86-avx2, intel-x86-avx512-vnni-bf16): one result per CPU vendor and kind, kept in git, so figures
from different machines sit side by side instead of overwriting each other.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from lepetpal_tui.policy.speed.cpu_caps import RELEVANT_FLAGS, cpu_caps

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    from lepetpal_tui.policy.speed.apply import int8_activation_bits

    caps = cpu_caps()
    return {
        "cpu": caps.model, "cpu_vendor": cpu_vendor(), "cpu_kind": caps.kind, "isa_flags": sorted(caps.flags & _FLAGS),
        "kernels_capped_by": caps.capped_by or None, "not_reported_by_cpu": sorted(caps.not_reported) or None,
        "torch_cpu_capability": caps.torch_capability, "int8_activation_bits": int8_activation_bits(),
        "bf16_native": caps.bf16_native, "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(),
    }


def steal_seconds() -> float | None:
    """CPU time the hypervisor took from this machine's CPUs so far (all CPUs summed; /proc/stat "steal").

    On a virtual machine the host can stop a vCPU for several milliseconds; a tick that falls then is
    late whatever the engine does. Print it beside tick jitter (the difference over the measured window)
    so a tail can be read against it. None where the kernel does not report it (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def steal_percent(before: float | None, after: float | None, seconds: float) -> float | None:
    """Steal over a window as a percentage of all CPUs' time."""
    if before is None or after is None or seconds <= 0:
        return None
    return 100.0 * (after - before) / (seconds * (os.cpu_count() or 1))


def machine_line() -> str:
    return f"CPU: {cpu_caps().describe()}, {os.cpu_count()} CPUs, {platform.platform()}"


def cpu_vendor() -> str:
    """"amd", "intel", or the machine name elsewhere ("aarch64"): two vendors' CPUs of one kind (the same
    ISA path) still differ in speed, so their figures are kept apart."""
    if not cpu_caps().is_x86:  # an aarch64 process under qemu-user reads the x86 host's /proc/cpuinfo
        return platform.machine().lower() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor, vendor.lower())
    except OSError:
        pass
    return platform.machine().lower() or "cpu"


def results_dir() -> Path:
    """bench/results/<vendor>-<cpu kind>, e.g. amd-x86-avx2, intel-x86-avx512-vnni-bf16; a run whose kernels
    were capped below the CPU (ONEDNN_MAX_CPU_ISA, ...) adds "-capped": a bigger CPU running a smaller
    one's kernels is not that smaller CPU (clock, caches and memory differ), so its figures stay apart. A run
    where /proc/cpuinfo lists features the CPU does not report to programs (QEMU's user mode emulating a
    smaller CPU on this one) adds "-emulated": its accuracy figures hold, its times say nothing."""
    caps = cpu_caps()
    suffix = ("-capped" if caps.capped_by else "") + ("-emulated" if caps.not_reported else "")
    return RESULTS_ROOT / f"{cpu_vendor()}-{caps.kind}{suffix}"


def results_path(name: str) -> Path:
    return results_dir() / f"{name}.json"


def write_result(name: str, result: dict[str, Any]) -> Path:
    out = results_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), **result}, indent=2) + "\n")
    return out


_FLAGS = frozenset(RELEVANT_FLAGS)
