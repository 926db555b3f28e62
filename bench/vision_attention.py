"""The vision encoder's attention kernels on this CPU: what policy/speed/kernel_probe.py decides, checked.

Builds the full-size SmolVLA (random weights, as bench/policy_latency.py), converts it to the int8 path,
then times interleaved the vision encoder alone on one 512x512 image's 1024 patches and whole chunks,
with the encoder's attention forced to each kernel (fp32 SDPA, bf16 SDPA, bf16 per head). Prints the
probe's own verdict beside them, so a CPU where the probe chose wrong shows up as a contradiction.

Usage: .venv/bin/python bench/vision_attention.py [--reps 6]
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
    ap.add_argument("--reps", type=int, default=6, help="timed runs of each, interleaved")
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
    chosen = encoder.kernel
    kernels = kernel_probe.ATTENTION_KERNELS
    x = torch.randn(1, 1024, 768, generator=torch.Generator().manual_seed(args.seed))
    enc_s: dict[str, list[float]] = {k: [] for k in kernels}
    chunk_s: dict[str, list[float]] = {k: [] for k in kernels}
    steal0, t_start = steal_seconds(), time.monotonic()
    with torch.inference_mode():
        for k in kernels:  # warm-up of each form
            encoder.kernel = k
            encoder(x)
        for i in range(args.reps):
            for k in kernels:
                encoder.kernel = k
                t = time.perf_counter()
                encoder(x)
                enc_s[k].append(time.perf_counter() - t)
                t = time.perf_counter()
                ours.raw_chunk(obs, noise=noise)
                chunk_s[k].append(time.perf_counter() - t)
            print(f"  rep {i + 1}: encoder " + " / ".join(f"{k} {enc_s[k][-1] * 1e3:.0f}" for k in kernels)
                  + " ms; chunk " + " / ".join(f"{k} {chunk_s[k][-1]:.3f}" for k in kernels) + " s", flush=True)
    encoder.kernel = chosen
    steal = steal_percent(steal0, steal_seconds(), time.monotonic() - t_start)
    med = {name: {k: statistics.median(v[k]) for k in kernels} for name, v in (("encoder", enc_s), ("chunk", chunk_s))}
    print(f"\n{machine_line()}")
    print(f"probe: {verdict}")
    for name, unit, scale in (("encoder", "ms", 1e3), ("chunk", "s", 1.0)):
        print(f"{name} median: " + ", ".join(f"{k} {med[name][k] * scale:.3f} {unit}" for k in kernels))
    faster = min(kernels, key=lambda k: med["encoder"][k])
    # The probe's margin (bf16 must take <= BF16_MARGIN of fp32's time) may keep fp32 within 10 % of the fastest.
    near = med["encoder"][chosen] <= med["encoder"][faster] / kernel_probe.BF16_MARGIN
    print(f"measured fastest here: {faster}; the probe chose {chosen}"
          f" ({'agrees' if faster == chosen else 'within the margin' if near else 'DISAGREES'});"
          f" steal {steal if steal is not None else '?'} %")
    out = write_result("vision_attention", {
        "probe": verdict, "probe_chose": chosen,
        "encoder_s": enc_s, "chunk_s": chunk_s, "median_encoder_s": med["encoder"], "median_chunk_s": med["chunk"],
        "measured_fastest": faster, "probe_agrees": faster == chosen or near,
        "steal_percent": steal, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
