"""Control-loop figures: tick jitter at 30 Hz with inference running and the controlling process busy,
starved ticks, and e-stop latency (command sent -> last Goal_Position write seen on the bus).

Runs the engine in its own process, exactly as the TUI does, on the simulated arm (answering with real
1 Mbps wire timing), with the real tiny SmolVLA checkpoint (built offline) as the policy. The controlling
process keeps one thread spinning pure-Python work the whole time, as a busy UI would.

    .venv/bin/python bench/control_loop.py [--duration 30] [--estops 5] [--policy tiny|scripted] [--record]
                                           [--camera-source synthetic|pattern] [--pane-hz 5]

--record compares recording off / on / encoding instead (bench/control_loop_record.py).
--pane-hz N reads the camera's frames as the TUI's camera pane does (default 5, [ui] camera_fps; 0: the pane
hidden, so the engine draws no frames for it).
--camera-source pattern swaps the simulated arm's scene camera (drawn in its renderer process, asked and
copied from the engine's frame-ring and inference threads) for the cheap moving pattern drawn in the engine:
the difference is what the scene camera still costs the tick.

Prints the figures and writes bench/results/<vendor>-<cpu kind>/control_loop.json (control_loop_pattern.json for the
pattern camera). Goal: p99 jitter <= 2 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from machine import (  # bench/machine.py (the script's folder is on sys.path)
    machine_line,
    steal_percent,
    steal_seconds,
    write_result,
)

from lepetpal_tui.engine.launcher import EngineClient
from lepetpal_tui.engine.session_log import read_log
from lepetpal_tui.settings import Settings
from lepetpal_tui.settings.schema import CameraSettings
from lepetpal_tui.stats import percentile
from lepetpal_tui.wire import EngineState, EStop, Rearm, Start, TelemetryBatch, TickSample


def busy_ui(stop: threading.Event) -> None:
    """What a busy Textual UI does to its own process: hold the GIL with Python work."""
    x = 0
    while not stop.is_set():
        for i in range(20000):
            x = (x + i * i) % 1000003


def camera_pane(ring_name: str, hz: float, stop: threading.Event) -> None:
    """What the TUI's camera pane does while shown: ask for frames at `hz` and copy the newest one."""
    from lepetpal_tui.frame_ring import PREVIEW, FrameRing

    ring = FrameRing.attach(ring_name)
    try:
        while not stop.wait(1.0 / hz):
            ring.want(PREVIEW, hz)
            for cam in ring.cameras:
                ring.latest(cam)
    finally:
        ring.close()


def with_bench_control(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with --no-realtime-wakeup applied."""
    control = dataclasses.replace(settings.control, realtime_wakeup=not args.no_realtime_wakeup)
    return dataclasses.replace(settings, control=control)


def variant(args: argparse.Namespace) -> str:
    """The result file's suffix for a non-default setup: the default file stays the comparable figure."""
    return ("" if args.camera_source == "synthetic" else f"_{args.camera_source}") + (
        "_no_rt_wakeup" if args.no_realtime_wakeup else "") + ("_pane_hidden" if args.pane_hz <= 0 else "")


def with_camera_source(settings: Settings, source: str) -> dict[str, CameraSettings]:
    """The settings' cameras with their source replaced (--camera-source)."""
    return {name: dataclasses.replace(cam, source=source) for name, cam in settings.cameras.items()}


def wait(client: EngineClient, sink: list[TelemetryBatch], pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batches = client.poll(0.05)
        sink.extend(batches)
        if any(pred(b) for b in batches):
            return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of running for the jitter figures")
    ap.add_argument("--estops", type=int, default=5, help="e-stops to time")
    ap.add_argument("--policy", choices=["tiny", "scripted"], default="tiny")
    ap.add_argument("--no-busy", action="store_true", help="leave the controlling process idle")
    ap.add_argument("--camera-source", choices=["synthetic", "pattern"], default="synthetic",
                    help="the camera: the simulated arm's scene (default; drawn in its renderer process) or "
                         "the cheap moving pattern, to split the scene renderer's share of the jitter")
    ap.add_argument("--pane-hz", type=float, default=Settings().ui.camera_fps,
                    help="read frames as the shown camera pane does, at this rate (0: the pane hidden)")
    ap.add_argument("--no-realtime-wakeup", action="store_true",
                    help="[control] realtime_wakeup = false: the tick sleeps at normal priority (nice -10 only)")
    ap.add_argument("--record", action="store_true",
                    help="jitter and starved ticks with recording off, on and encoding (--duration each)")
    args = ap.parse_args()
    if args.record:
        from control_loop_record import record_main

        return record_main(args, busy_ui, wait, with_camera_source, with_bench_control, variant)

    from lepetpal_tui.sim.process import SimArm

    tmp = Path(tempfile.mkdtemp(prefix="lepetpal-bench-"))
    settings = Settings()
    model = dataclasses.replace(settings.model, mode="scripted")
    if args.policy == "tiny":
        from lepetpal_tui.policy.demo_checkpoint import build_test_policy

        path = build_test_policy(tmp / "tiny-smolvla")
        model = dataclasses.replace(settings.model, path=str(path), fallback_to_scripted=False)
    settings = dataclasses.replace(
        settings, model=model, logging=dataclasses.replace(settings.logging, dir=str(tmp / "logs")),
        cameras=with_camera_source(settings, args.camera_source),
    )
    settings = with_bench_control(settings, args)
    period = 1.0 / settings.control.rate_hz
    batches: list[TelemetryBatch] = []
    stop_busy = threading.Event()
    with SimArm.start(trace=True, wire_time=True) as sim:
        client = EngineClient.spawn(settings, sim_port=sim.port)
        try:
            if not wait(client, batches, lambda b: b.model is not None and b.model.phase in ("ready", "fallback"),
                        300.0):
                print("the engine did not become ready; see", client.log_path)
                return 1
            if not args.no_busy:
                threading.Thread(target=busy_ui, args=(stop_busy,), daemon=True).start()
            if args.pane_hz > 0:
                if not any(b.frame_ring for b in batches):
                    wait(client, batches, lambda b: b.frame_ring != "", 10.0)
                ring_name = next((b.frame_ring for b in reversed(batches) if b.frame_ring), "")
                if ring_name:
                    threading.Thread(target=camera_pane, args=(ring_name, args.pane_hz, stop_busy),
                                     daemon=True).start()
                else:
                    print("no frame ring reported: the camera pane is not read in this run")
            # 1) jitter and starvation while running with inference in the loop
            sim.set_tracing(False)  # tracing every packet costs the sim CPU; not needed for jitter
            client.send(Start(task="pick up the ball"))
            wait(client, batches, lambda b: b.state == EngineState.RUNNING, 10.0)
            t_run, steal0 = time.monotonic(), steal_seconds()
            mark = len(batches)
            while time.monotonic() - t_run < args.duration:
                batches.extend(client.poll(0.05))
            steal = steal_percent(steal0, steal_seconds(), time.monotonic() - t_run)
            ticks: list[TickSample] = [t for b in batches[mark:] for t in b.ticks]
            chunks = [c for b in batches[mark:] for c in b.chunks]
            starved = sum(t.starved for t in ticks)
            # 2) e-stop latency, measured on the bus
            sim.set_tracing(True)
            estop_ms: list[float] = []
            for _ in range(args.estops):
                time.sleep(1.0 + 0.37 * len(estop_ms))  # vary the phase against the tick grid
                sim.clear_trace()
                time.sleep(0.2)
                t_cmd = time.monotonic()
                client.send(EStop(sent_at=t_cmd))
                wait(client, batches, lambda b: b.state == EngineState.ESTOP, 2.0)
                time.sleep(0.3)
                goal_times = [r.t for r in sim.trace() if r.direction == "rx" and r.register == "Goal_Position"]
                if goal_times:
                    estop_ms.append((max(goal_times) - t_cmd) * 1000)
                client.send(Rearm())
                wait(client, batches, lambda b: b.state == EngineState.READY, 5.0)
                client.send(Start(task="pick up the ball"))
                wait(client, batches, lambda b: b.state == EngineState.RUNNING, 5.0)
        finally:
            stop_busy.set()
            client.close()

    # Jitter = how late each tick started against its deadline on the absolute 30 Hz grid, as the engine
    # measured it (the session log's late_s). |period - 33.3 ms| is also given; it counts a late tick
    # twice (the period before and the one after).
    t_lo, t_hi = ticks[0].t, ticks[-1].t
    jitter_ms = [
        r["late_s"] * 1000
        for r in read_log(client.log_path)
        if r.get("type") == "tick" and r.get("late_s") is not None and t_lo <= r["t"] <= t_hi
    ]
    # Slots the loop skipped (a tick that overran a whole period skips to the current slot): the slots
    # inside each gap of 1.5 periods or more between two tick starts; and the longest gap.
    starts = sorted(r["t"] for r in read_log(client.log_path) if r.get("type") == "tick" and t_lo <= r["t"] <= t_hi)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    skipped = sum(round(g / period) - 1 for g in gaps if g >= 1.5 * period)
    longest_gap_ms = max(gaps, default=0.0) * 1000
    periods = [t.period_s for t in ticks[1:]]
    period_dev_ms = [abs(p - period) * 1000 for p in periods]
    work_ms = [t.work_s * 1000 for t in ticks]
    lat_ms = [c.timing.total_s * 1000 for c in chunks]
    result = {
        "policy": "tiny SmolVLA (real checkpoint format, 0.3 M parameters)" if args.policy == "tiny" else "scripted",
        "controlling_process_busy": not args.no_busy,
        "camera_source": args.camera_source,
        "camera_pane_hz": args.pane_hz,
        "realtime_wakeup": settings.control.realtime_wakeup,
        "rate_hz": settings.control.rate_hz,
        "run_s": args.duration,
        "ticks": len(ticks),
        "tick_jitter_ms": {"p50": percentile(jitter_ms, 50), "p99": percentile(jitter_ms, 99), "max": max(jitter_ms)},
        "period_deviation_ms": {"p50": percentile(period_dev_ms, 50), "p99": percentile(period_dev_ms, 99),
                                "max": max(period_dev_ms)},
        "skipped_slots": skipped,
        "longest_gap_between_ticks_ms": longest_gap_ms,
        "load_average_1min": os.getloadavg()[0],
        "host_steal_percent": steal,
        "tick_work_ms": {"p50": percentile(work_ms, 50), "p99": percentile(work_ms, 99)},
        "starved_ticks": starved,
        "chunks": len(chunks),
        "chunk_latency_ms": {"p50": percentile(lat_ms, 50), "p99": percentile(lat_ms, 99)} if lat_ms else None,
        "estop_to_last_goal_write_ms": {
            "samples": [round(v, 2) for v in estop_ms],
            "max": max(estop_ms) if estop_ms else None,
            "median": statistics.median(estop_ms) if estop_ms else None,
        },
        "session_log": str(client.log_path),
    }
    out = write_result("control_loop" + variant(args), result)
    j = result["tick_jitter_ms"]
    print(machine_line())
    print(f"policy: {result['policy']}; controlling process busy: {result['controlling_process_busy']}; "
          f"camera: {args.camera_source}, read at {args.pane_hz:g} Hz as the shown camera pane does; "
          f"realtime wakeup: {settings.control.realtime_wakeup}")
    print(f"ticks {len(ticks)} at {settings.control.rate_hz:g} Hz over {args.duration:g} s; starved {starved}")
    pd = result["period_deviation_ms"]
    print(f"tick jitter (start vs its deadline): p50 {j['p50']:.3f} ms  p99 {j['p99']:.3f} ms  "
          f"max {j['max']:.3f} ms   (goal p99 <= 2 ms: {'met' if j['p99'] <= 2.0 else 'NOT met'})")
    print(f"|period - {period * 1000:.2f} ms|: p50 {pd['p50']:.3f} ms  p99 {pd['p99']:.3f} ms  max {pd['max']:.3f} ms")
    print(f"longest gap between two tick starts {longest_gap_ms:.1f} ms; slots skipped after an overrun {skipped}")
    print(f"machine load average (1 min) at the end: {result['load_average_1min']:.2f} on {os.cpu_count()} cores")
    print("CPU time the hypervisor took while running (steal): "
          + ("not reported here" if steal is None else f"{steal:.1f} % of the CPUs (a stolen slice makes ticks late)"))
    print(f"tick work (read + filter + write): p50 {percentile(work_ms, 50):.2f} ms  p99 {percentile(work_ms, 99):.2f} ms")
    if lat_ms:
        print(f"chunks {len(chunks)}; chunk latency p50 {percentile(lat_ms, 50):.0f} ms  p99 {percentile(lat_ms, 99):.0f} ms")
    if estop_ms:
        print(f"e-stop -> last goal write: {', '.join(f'{v:.1f}' for v in estop_ms)} ms "
              f"(max {max(estop_ms):.1f} ms; one tick is {period * 1000:.1f} ms)")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
