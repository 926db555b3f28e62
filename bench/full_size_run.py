"""A headless run of the app on the simulated arm with a full-size SmolVLA checkpoint (random weights).

What it shows (issue 12): time from launch to "policy ready" once the files are on disk (first start,
with the accuracy check, and a second start that takes the cached check), starved running ticks, the
playback speed factor (p50 / min), the control loop's jitter beside the full-size policy (tick lateness
and period deviation), and that the safety filter's per-tick limit held on every written goal.

The checkpoint (SmolVLM2-500M dimensions from bench/policy_latency.py, 450 M parameters, ~1.8 GB) is
built once into $XDG_CACHE_HOME/lepetpal/bench-smolvla-full (default ~/.cache). The accuracy check's
cache for this bench lives beside it, so a first start here is a first start.

Usage: .venv/bin/python bench/full_size_run.py [--duration 60] [--rebuild]
Writes bench/results/<vendor>-<cpu kind>/full_size_run.json. Takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_line, write_result  # bench/machine.py (the script's folder is on sys.path)
from policy_latency import build_backbone, build_policy

from lepetpal_tui.engine.session_log import read_log, summarize
from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME
from lepetpal_tui.settings import Settings
from lepetpal_tui.stats import percentile

MARKER = "bench-checkpoint.json"


def checkpoint_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lepetpal" / "bench-smolvla-full"


def ensure_checkpoint(rebuild: bool) -> Path:
    out = checkpoint_dir()
    if (out / MARKER).is_file() and not rebuild:
        return out
    shutil.rmtree(out, ignore_errors=True)
    backbone = out / BACKBONE_DIRNAME
    backbone.mkdir(parents=True)
    build_backbone(backbone)
    policy, pre, post = build_policy(backbone, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        policy.save_pretrained(out)
        pre.save_pretrained(out)
        post.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"built": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return out


def run_once(ckpt: Path, duration: float, accuracy_file: Path) -> dict[str, Any]:
    env = dict(os.environ, LEPETPAL_ACCURACY_CACHE=str(accuracy_file))
    cmd = [sys.executable, "-m", "lepetpal_tui", "run", "--headless", "--sim", "--model-path", str(ckpt),
           "--task", "pick up the ball", "--duration", str(duration), "--load-timeout", "300"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    ready_s: float | None = None
    ready_line = ""
    log_path: Path | None = None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if ready_s is None and "model ready" in line:
            ready_s = time.monotonic() - t0
            ready_line = line.strip()
            print(f"  {ready_line}", flush=True)
        if m := re.match(r".*session log: (\S+)", line):
            log_path = Path(m.group(1))
        if "speed" in line and "RUNNING" in line and len(lines) % 10 == 0:
            print(f"  {line.rstrip()}", flush=True)
    code = proc.wait()
    if code != 0 or log_path is None:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"lepetpal run failed (exit {code})")
    return {"ready_s": ready_s, "ready_line": ready_line, "log": log_path, "exit": code, "tail": lines[-16:]}


def filter_check(log: Path, max_step: float) -> dict[str, Any]:
    """Largest change between consecutive written goals, per joint, against the filter's limit."""
    goals = [np.asarray(r["goal"], dtype=float) for r in read_log(log)
             if r.get("type") == "tick" and r.get("written") and r.get("goal") is not None]
    steps = np.abs(np.diff(np.asarray(goals), axis=0)) if len(goals) > 1 else np.zeros((0, 6))
    largest = float(steps.max()) if steps.size else 0.0
    return {"written_goals": len(goals), "largest_step": largest, "limit": max_step,
            "respected": largest <= max_step + 1e-3}  # the log rounds goals to 3 decimals


def tick_timing(log: Path, period_s: float) -> dict[str, Any]:
    """RUNNING ticks' lateness (start vs its deadline) and |period - 1/rate| in ms, p50 / p99 / max: the
    control loop's jitter beside the full-size policy on the same cores."""
    late, deviation = [], []
    for r in read_log(log):
        if r.get("type") != "tick" or r.get("state") != "RUNNING":
            continue
        if r.get("late_s") is not None:
            late.append(float(r["late_s"]) * 1e3)
        deviation.append(abs(float(r["period_s"]) - period_s) * 1e3)

    def figures(values: list[float]) -> dict[str, float] | None:
        return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)} if values else None

    return {"late_ms": figures(late), "period_deviation_ms": figures(deviation)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="running seconds per run")
    ap.add_argument("--rebuild", action="store_true", help="build the checkpoint again")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    t0 = time.perf_counter()
    ckpt = ensure_checkpoint(args.rebuild)
    print(f"checkpoint {ckpt} ({time.perf_counter() - t0:.0f} s to build or find)", flush=True)
    accuracy_file = ckpt.parent / "bench-accuracy.json"
    accuracy_file.unlink(missing_ok=True)
    print("first start (accuracy check runs and is cached), short run:", flush=True)
    first = run_once(ckpt, 5.0, accuracy_file)
    print(f"{args.duration:g} s run (cached accuracy check):", flush=True)
    main_run = run_once(ckpt, args.duration, accuracy_file)
    log = main_run["log"]
    summary = summarize(log)
    speeds = [float(r["speed"]) for r in read_log(log)
              if r.get("type") == "tick" and r.get("state") == "RUNNING" and "speed" in r]
    check = filter_check(log, Settings().arm.max_step_per_tick)
    ticks = tick_timing(log, 1.0 / Settings().control.rate_hz)
    result = {
        "checkpoint": "SmolVLA, SmolVLM2-500M dimensions, random weights, 1 camera 640x480",
        "time_to_ready_first_start_s": first["ready_s"], "first_start_ready": first["ready_line"],
        "time_to_ready_cached_s": main_run["ready_s"], "cached_ready": main_run["ready_line"],
        "run_s": args.duration, "running_ticks": len(speeds), "starved_ticks": summary.starved_ticks,
        "chunks": summary.chunks, "chunk_latency_p50_s": summary.chunk_latency_p50_s,
        "speed_p50": percentile(speeds, 50) if speeds else None, "speed_min": min(speeds) if speeds else None,
        "safety_filter": check, "tick_timing": ticks, "session_log": str(log),
    }
    out = write_result("full_size_run", result)
    print()
    print(machine_line())
    print(f"time to ready: first start {first['ready_s']:.1f} s, cached check {main_run['ready_s']:.1f} s "
          f"(goal <= 30 s after the files are on disk)")
    print(f"running ticks {len(speeds)}, starved {summary.starved_ticks}, chunks {summary.chunks}, "
          f"chunk latency p50 {summary.chunk_latency_p50_s or 0:.2f} s")
    if speeds:
        print(f"playback speed p50 {percentile(speeds, 50):.2f}x, min {min(speeds):.2f}x")
    late, dev = ticks["late_ms"], ticks["period_deviation_ms"]
    if late and dev:
        print(f"tick lateness p50 {late['p50']:.2f} / p99 {late['p99']:.2f} / max {late['max']:.2f} ms; "
              f"|period - {1e3 / Settings().control.rate_hz:.2f} ms| p99 {dev['p99']:.2f} ms (goal p99 <= 2 ms)")
    print(f"safety filter: largest per-tick goal change {check['largest_step']:.3f} (limit {check['limit']:g}): "
          f"{'respected' if check['respected'] else 'EXCEEDED'} over {check['written_goals']} written goals")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
