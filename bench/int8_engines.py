"""Which quantized engine should pack the int8 linears outside the vision encoder: an A/B in one process.

A: what `policy/speed/apply.int8_engine` chooses on this CPU; B: the other choice (oneDNN for the vision
encoder only, fbgemm for the rest, where A packs every layer with oneDNN; or the reverse). Two copies of
the full-size SmolVLA (random weights, as bench/policy_latency.py), converted each way, chunks timed
interleaved in the app's setting (passive OpenMP), and each compared with LeRobot's fp32 chunk for the
same noise. Where the rule matters: AMX, and VNNI that only oneDNN uses (AVX-VNNI without AVX-512); to
try the second on a bigger CPU, cap the kernels:
  OMP_WAIT_POLICY=PASSIVE FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI \\
      .venv/bin/python bench/int8_engines.py

Usage: .venv/bin/python bench/int8_engines.py [--reps 8]
Writes bench/results/<vendor>-<cpu kind>/int8_engines.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
from machine import machine_line, write_result  # bench/machine.py (the script's folder is on sys.path)
from policy_latency import our_runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=8, help="timed chunks of each, interleaved")
    args = ap.parse_args()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: OMP_WAIT_POLICY is not PASSIVE: this is not the app's setting", file=sys.stderr)

    from lepetpal_tui.policy.speed import apply as policy_speed

    ref, chosen, obs, noise = our_runner(argparse.Namespace(seed=0, threads=0, flow_steps=0))
    other = copy.deepcopy(chosen)
    fp32, _ = ref.raw_chunk(obs, noise=noise)
    del ref
    chosen.to_int8()
    label_a = f"{policy_speed.int8_engines()}{policy_speed.int8_engine_reason()}, {policy_speed.int8_activation_bits()}"
    everywhere = policy_speed.int8_engine("x") == "onednn"
    real = policy_speed.int8_engine
    policy_speed.int8_engine = lambda name: ("onednn" if "vision_model" in name.split(".") else None) if everywhere \
        else "onednn"  # the other choice
    try:
        other.to_int8()
        label_b = f"{policy_speed.int8_engines()}, {policy_speed.int8_activation_bits()}"
    finally:
        policy_speed.int8_engine = real
    times: dict[str, list[float]] = {"A": [], "B": []}
    pairs = (("A", chosen), ("B", other))
    for rep in range(args.reps + 1):
        for name, runner in pairs if rep % 2 == 0 else pairs[::-1]:
            t = time.perf_counter()
            runner.raw_chunk(obs, noise=noise)
            if rep:  # the first round warms both up
                times[name].append(time.perf_counter() - t)
    diffs = {name: float(np.max(np.abs(runner.raw_chunk(obs, noise=noise)[0] - fp32))) for name, runner in pairs}
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["A"], times["B"], strict=True))
    print(machine_line())
    for name, label in (("A", label_a), ("B", label_b)):
        print(f"{name} ({'chosen' if name == 'A' else 'other'}: {label}): median {medians[name]:.3f} s "
              f"{[round(t, 3) for t in times[name]]}, max diff to fp32 {diffs[name]:.2f} deg")
    print(f"A / B: median {medians['A'] / medians['B']:.2f}, paired {paired:.2f}")
    out = write_result("int8_engines", {
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "chosen": {"engines": label_a, "chunk_s": times["A"], "median_s": medians["A"], "max_diff_deg": diffs["A"]},
        "other": {"engines": label_b, "chunk_s": times["B"], "median_s": medians["B"], "max_diff_deg": diffs["B"]},
        "ratio_chosen_to_other": medians["A"] / medians["B"], "paired_ratio": paired,
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
