"""Replay recorded chunk latencies through the engine's real pacer and plan queue: how fast the arm could
play, and whether it would starve, with another latency headroom (engine/pacing.py, LATENCY_HEADROOM).

When inference is slower than a chunk lasts, the actuator plays the plan at the speed that inference
`max(last 3 latencies) * LATENCY_HEADROOM + 2` ticks long keeps fed chunk after chunk. The headroom
covers a chunk slower than the last three. This bench replays real 60 s runs' latency series (kept below
with where they came from, or read from session logs) and synthetic ones with spikes through
`engine.pacing.Pacer` and `engine.chunks.ChunkQueue` tick by tick (inference back to back, as the engine
runs it; no arm, no model), for several fixed headrooms and an adaptive one (the largest recent
"latency / prediction" ratio). A chunk later than predicted is expected OVERDUE_FRACTION of its time so
far from now (the plan stretches while it is late). CPU-independent: the series carry their machine in them.

Usage: .venv/bin/python bench/pacing_replay.py [--log logs/session-....jsonl ...]
Writes bench/results/pacing_replay.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from machine import RESULTS_ROOT  # bench/machine.py (the script's folder is on sys.path)

from lepetpal_tui.engine import pacing
from lepetpal_tui.engine.chunks import ChunkQueue
from lepetpal_tui.settings import ControlSettings

# Chunk latencies (s) of 60 s `bench/full_size_run.py` runs (session logs: model + pre/postprocessing),
# AMD EPYC Zen 4, 2 cores; "AVX2" = its kernels capped to AVX2.
RECORDED: dict[str, list[float]] = {
    "2026-12-06 17:29 AVX-512 (a load beside it for a while)": [
        0.8, 0.9, 0.89, 1.19, 1.45, 1.35, 1.45, 1.5, 1.38, 1.38, 1.51, 1.43, 1.54, 1.44, 1.49, 1.45, 1.5, 0.97, 0.91,
        0.9, 0.87, 0.88, 0.9, 0.91, 0.96, 1.06, 1.03, 0.95, 0.95, 0.92, 0.95, 0.89, 0.97, 1.11, 0.98, 0.96, 1.18,
        1.01, 0.96],
    "2026-12-06 21:43 AVX-512": [
        0.96, 1.14, 1.04, 1.02, 1.17, 0.94, 0.89, 1.07, 1.22, 1.06, 1.12, 1.09, 1.07, 1.07, 1.03, 1.09, 0.97, 0.95,
        1.11, 1.04, 1.1, 1.16, 1.21, 1.01, 1.02, 1.15, 1.05, 1.04, 1.05, 1.11, 1.16, 0.94, 1.07, 1.06, 1.12, 0.98],
    "2026-12-06 22:50 AVX-512": [
        0.92, 0.91, 0.91, 0.9, 0.95, 0.95, 0.91, 0.89, 0.89, 0.95, 0.96, 1.12, 0.94, 1.0, 0.92, 0.9, 0.89, 0.88,
        1.03, 0.88, 0.84, 0.91, 0.93, 0.9, 0.91, 0.86, 0.97, 1.08, 1.04, 0.92, 0.93, 0.93, 1.05, 1.07, 1.1, 0.94,
        0.89, 0.91, 1.09, 1.02, 1.03],
    "2026-12-06 23:58 AVX-512": [
        0.77, 0.83, 0.81, 0.82, 0.81, 0.81, 0.82, 0.82, 0.87, 0.82, 0.84, 0.86, 0.82, 0.82, 0.82, 0.81, 0.82, 0.84,
        0.84, 0.82, 0.82, 0.81, 0.82, 0.81, 0.81, 0.8, 0.81, 0.8, 0.78, 0.77, 0.78, 0.78, 0.76, 0.78, 0.8, 0.76,
        0.78, 0.77, 0.81, 0.78, 0.78, 0.79, 0.76, 0.76, 0.76, 0.78, 0.79, 0.81, 0.78, 0.8, 0.8, 0.82, 0.84, 0.83,
        0.83, 0.77, 0.76, 0.78, 0.76, 0.78, 0.79, 0.78, 0.76, 0.78, 0.79, 0.8, 0.79, 0.85, 0.8, 0.8, 0.76, 0.76,
        0.79, 0.77],
    "2026-12-07 00:02 AVX2": [
        1.24, 1.27, 1.27, 1.27, 1.27, 1.26, 1.26, 1.23, 1.27, 1.3, 1.33, 1.28, 1.31, 1.32, 1.33, 1.35, 1.36, 1.37,
        1.33, 1.36, 1.3, 1.29, 1.29, 1.31, 1.3, 1.26, 1.24, 1.33, 1.29, 1.39, 1.3, 1.29, 1.33, 1.32, 1.31, 1.27,
        1.33, 1.35, 1.25, 1.26, 1.27, 1.25, 1.3, 1.33, 1.4],
    "2026-12-07 01:31 AVX-512, a busy loop at nice 0 for 2 s in every 10 beside it": [
        0.79, 0.83, 0.79, 0.84, 1.19, 1.4, 0.93, 0.8, 0.81, 0.82, 0.87, 0.98, 0.89, 0.86, 0.89, 1.58, 1.01,
        0.87, 1.03, 0.94, 0.94, 0.91, 0.95, 0.97, 1.58, 1.58, 1.02, 0.85, 0.89, 0.86, 0.85, 0.86, 0.93, 1.14,
        1.65, 1.16, 0.89, 0.91, 0.81, 0.85, 0.83, 0.8, 0.82, 0.84, 1.28, 1.31, 0.81, 0.88, 0.96, 0.96, 0.88,
        1.13, 0.86, 0.86, 1.29, 1.37, 0.88, 0.88, 0.88],
    "2026-12-07 01:33 AVX-512, the same busy loop beside it": [
        0.8, 0.81, 0.88, 1.5, 0.92, 0.81, 0.85, 0.83, 0.79, 0.79, 0.78, 0.88, 0.9, 1.03, 1.46, 0.83, 0.77,
        0.81, 0.79, 0.81, 0.78, 0.8, 0.78, 0.79, 0.79, 1.51, 1.01, 0.83, 0.79, 0.81, 0.86, 0.82, 0.88, 0.83,
        0.82, 1.0, 1.5, 0.85, 0.85, 0.84, 0.82, 0.85, 0.82, 0.81, 0.83, 0.96, 1.44, 1.1, 0.85, 0.92, 0.85,
        0.8, 0.84, 1.02, 0.83, 0.82, 1.04, 1.51, 0.85, 0.88, 0.89, 0.89, 0.82],
}
HEADROOMS = (1.0, 1.05, 1.10, pacing.LATENCY_HEADROOM, 1.25)


def synthetic(spike: float, seed: int = 1) -> list[float]:
    """1.3 s chunks (+-3 %), every 25th `spike` times slower: a background job now and then."""
    rng = random.Random(seed)
    return [1.3 * rng.uniform(0.97, 1.03) * (spike if i % 25 == 24 else 1.0) for i in range(150)]


class AdaptivePacer(pacing.Pacer):
    """The headroom from the latencies themselves: the largest "latency / max of the 3 before it" of the
    last 60 chunks, at least 1.05 (the shipped constant until 3 chunks are known)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.surprises: deque[float] = deque(maxlen=60)
        outer = self

        class Recent(deque[int]):
            def append(self, x: int) -> None:
                if self:
                    outer.surprises.append(x / max(1, max(self)))
                super().append(x)

        self.latency_ticks = Recent(maxlen=3)

    def speed(self, k: int, queue: ChunkQueue, awaiting_first_chunk: bool) -> float:
        headroom = pacing.LATENCY_HEADROOM if len(self.surprises) < 3 else min(1.5, max(1.05, max(self.surprises)))
        saved, pacing.LATENCY_HEADROOM = pacing.LATENCY_HEADROOM, headroom
        try:
            return super().speed(k, queue, awaiting_first_chunk)
        finally:
            pacing.LATENCY_HEADROOM = saved


def replay(latencies_s: list[float], pacer_type: type[pacing.Pacer] = pacing.Pacer) -> dict[str, Any]:
    """Tick by tick: the actuator's pop at the pacer's speed, inference back to back (a chunk computed from
    tick k lands before the pop of tick k + ceil(latency * rate)), merged as the engine merges."""
    control = ControlSettings()
    n = 50
    ticks = [max(1, math.ceil(s * control.rate_hz)) for s in latencies_s]
    pacer = pacer_type(control, 1.0 / control.rate_hz, lambda: n, lambda *a: None)
    queue = ChunkQueue()
    queue.reset(0)
    pending = iter(ticks)
    lands_at: int | None = None
    obs_tick, first = 0, True
    starved, speeds, depths, progress = 0, [], [], 0.0

    def start(k: int) -> None:
        nonlocal lands_at, obs_tick
        if lands_at is not None or not (first or pacer.chunk_due(queue.depth(queue.next_tick))):
            return
        latency = next(pending, None)
        if latency is not None:
            lands_at, obs_tick = k + latency, k
            pacer.infer_obs_tick = k

    start(0)
    for k in range(sum(ticks) - max(ticks)):  # stop before the series runs out
        if lands_at is not None and lands_at <= k:
            pacer.latency_ticks.append(max(0, queue.next_tick - obs_tick - 1))
            info = queue.merge(np.zeros((n, 6)), obs_tick, control.blend_steps, min_keep=pacer.keep_ticks(),
                               max_lag=pacer.max_lag_ticks)
            if not first:
                depths.append(info.depth_before)
            first, lands_at, pacer.infer_obs_tick = False, None, None
            start(k)
        speed = pacer.speed(k, queue, first)
        action = queue.pop(k, speed)
        if not first:
            speeds.append(speed)
            starved += action is None
            progress += 0.0 if action is None else speed
        start(k)
    return {"starved_ticks": starved, "speed_p50": round(statistics.median(speeds), 3),
            "speed_min": round(min(speeds), 3), "plan_steps_per_tick": round(progress / len(speeds), 3),
            "plan_left_at_merge_p50": statistics.median(depths)}


def from_log(path: Path) -> list[float]:
    lines = (json.loads(line) for line in path.read_text().splitlines() if '"type":"chunk"' in line)
    return [sum(d["timing"].values()) for d in lines]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", type=Path, action="append", default=[], help="a session log to replay too")
    args = ap.parse_args()
    series = {name: lat * 3 for name, lat in RECORDED.items()}  # each run three times over: ~2-4 min
    series.update({f"synthetic, every 25th chunk {s}x": synthetic(s) for s in (1.25, 1.4, 1.6, 2.0)})
    series.update({str(p): from_log(p) for p in args.log})
    results: dict[str, Any] = {}
    print(f"headroom shipped: {pacing.LATENCY_HEADROOM}; figures: starved ticks, speed p50 / min, plan steps played "
          "per tick (what the arm got done; a starved tick plays none), plan left at merge")
    for name, lat in series.items():
        print(f"{name} ({len(lat)} chunks, p50 {statistics.median(lat):.2f} s)")
        rows: dict[str, Any] = {}
        for headroom in HEADROOMS:
            saved, pacing.LATENCY_HEADROOM = pacing.LATENCY_HEADROOM, headroom
            try:
                rows[f"fixed {headroom:.2f}"] = replay(lat)
            finally:
                pacing.LATENCY_HEADROOM = saved
        rows["adaptive"] = replay(lat, AdaptivePacer)
        for label, r in rows.items():
            print(f"  {label:11s} starved {r['starved_ticks']:3d}  speed {r['speed_p50']:.3f} / {r['speed_min']:.3f}"
                  f"  progress {r['plan_steps_per_tick']:.3f}  left {r['plan_left_at_merge_p50']}")
        results[name] = rows
    out = RESULTS_ROOT / "pacing_replay.json"
    out.write_text(json.dumps({"shipped_headroom": pacing.LATENCY_HEADROOM, "series": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
