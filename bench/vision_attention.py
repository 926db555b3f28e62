"""The vision encoder's attention, bf16 against fp32, on this CPU: what policy/speed/kernel_probe.py decides.

Builds the full-size SmolVLA (random weights, as bench/policy_latency.py), converts it to the int8 path,
then times interleaved (bf16, fp32, bf16, fp32, ...) the vision encoder alone on one 512x512 image's 1024
patches and whole chunks, with the encoder's attention forced each way. Prints the probe's own verdict
beside them, so a CPU where the probe chose wrong shows up as a contradiction.

Usage: .venv/bin/python bench/vision_attention.py [--reps 8]
Writes bench/results/<vendor>-<cpu kind>/vision_attention.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line, steal_percent, steal_seconds, write_result
from policy_latency import our_runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=8, help="timed runs of each, interleaved")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from lepetpal_tui.policy.speed import kernel_probe

    _, ours, obs, noise = our_runner(argparse.Namespace(seed=args.seed, threads=0, flow_steps=0))
    ours.to_int8()
    ours.raw_chunk(obs, noise=noise)  # warm-up; the probe decides here
    verdict = kernel_probe.decisions().get("vision attention", "not probed")
    vlm: Any = ours.policy.model.vlm_with_expert.get_vlm_model()
    encoder = vlm.vision_model.encoder.forward  # the RowHalvesVisionEncoder to_int8 installed
    chosen = encoder.bf16
    x = torch.randn(1, 1024, 768, generator=torch.Generator().manual_seed(args.seed))
    enc_s: dict[bool, list[float]] = {True: [], False: []}
    chunk_s: dict[bool, list[float]] = {True: [], False: []}
    steal0, t_start = steal_seconds(), time.monotonic()
    with torch.inference_mode():
        for b in (True, False):  # warm-up of each form
            encoder.bf16 = b
            encoder(x)
        for i in range(args.reps):
            for b in (True, False):
                encoder.bf16 = b
                t = time.perf_counter()
                encoder(x)
                enc_s[b].append(time.perf_counter() - t)
                t = time.perf_counter()
                ours.raw_chunk(obs, noise=noise)
                chunk_s[b].append(time.perf_counter() - t)
            print(f"  rep {i + 1}: encoder bf16 {enc_s[True][-1] * 1e3:.0f} / fp32 {enc_s[False][-1] * 1e3:.0f} ms, "
                  f"chunk bf16 {chunk_s[True][-1]:.3f} / fp32 {chunk_s[False][-1]:.3f} s", flush=True)
    encoder.bf16 = chosen
    steal = steal_percent(steal0, steal_seconds(), time.monotonic() - t_start)
    med = {k: {b: statistics.median(v[b]) for b in (True, False)} for k, v in (("encoder", enc_s), ("chunk", chunk_s))}
    paired = {k: statistics.median(a / b for a, b in zip(v[True], v[False], strict=True))
              for k, v in (("encoder", enc_s), ("chunk", chunk_s))}
    print(f"\n{machine_line()}")
    print(f"probe: {verdict}")
    for k, unit, scale in (("encoder", "ms", 1e3), ("chunk", "s", 1.0)):
        print(f"{k}: bf16 attention {med[k][True] * scale:.3f} {unit}, fp32 {med[k][False] * scale:.3f} {unit}; "
              f"median paired bf16/fp32 {paired[k]:.2f}")
    faster = "bf16" if paired["encoder"] < 1 else "fp32"
    agrees = (faster == "bf16") == bool(chosen)
    print(f"measured faster here: {faster}; the probe chose {'bf16' if chosen else 'fp32'}"
          f" ({'agrees' if agrees else 'DISAGREES'}); steal {steal if steal is not None else '?'} %")
    out = write_result("vision_attention", {
        "probe": verdict, "probe_chose_bf16": bool(chosen),
        "encoder_s": {"bf16": enc_s[True], "fp32": enc_s[False]},
        "chunk_s": {"bf16": chunk_s[True], "fp32": chunk_s[False]},
        "median_paired_ratio_bf16_to_fp32": paired, "measured_faster": faster, "probe_agrees": agrees,
        "steal_percent": steal, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
