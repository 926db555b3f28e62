"""`bench/control_loop.py --record`: tick jitter and starved ticks with recording off, on, and while the
recorder encodes the episode it just recorded, in one engine process on the simulated arm, back to back.

Same setup as control_loop.py (engine in its own process, simulated arm with 1 Mbps wire timing, tiny
SmolVLA, a busy controlling process), with the default 640x480 synthetic camera recorded as video (H.264,
the [recording] default). Three phases of `--duration` seconds each:
  off     recording off
  on      recording on: every tick paired with its frame and staged by LeRobot's add_frame (nice +15)
  encode  recording off again, right after the "on" episode ended: the recorder encodes and saves it
Prints p50 / p99 / max jitter (tick start vs its deadline, from the session log) and starved ticks per
phase, the frames recorded and the ticks dropped, and writes bench/results/<vendor>-<cpu kind>/control_loop_record.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from machine import machine_line, steal_percent, steal_seconds, write_result

from lepetpal_tui.engine.launcher import EngineClient
from lepetpal_tui.engine.session_log import read_log
from lepetpal_tui.settings import Settings
from lepetpal_tui.stats import percentile
from lepetpal_tui.wire import (
    EngineState,
    Heartbeat,
    RecordingStatus,
    SetRecording,
    Start,
    Stop,
    TelemetryBatch,
)


def _phase(client: EngineClient, batches: list[TelemetryBatch], seconds: float, wait: Any,
           steal: dict[str, float | None], name: str) -> tuple[float, float]:
    client.send(Start(task="pick up the ball"))
    wait(client, batches, lambda b: b.state == EngineState.RUNNING, 10.0)
    t0, s0 = time.monotonic(), steal_seconds()
    while time.monotonic() - t0 < seconds:
        batches.extend(client.poll(0.05))
        client.send(Heartbeat())
    t1 = time.monotonic()
    steal[name] = steal_percent(s0, steal_seconds(), t1 - t0)
    client.send(Stop())
    wait(client, batches, lambda b: b.state == EngineState.READY, 5.0)
    return t0, t1


def record_main(args: argparse.Namespace, busy_ui: Any, wait: Any, with_camera_source: Any,
                with_bench_control: Any, variant: Any) -> int:
    from lepetpal_tui.policy.demo_checkpoint import build_test_policy
    from lepetpal_tui.sim.process import SimArm

    tmp = Path(tempfile.mkdtemp(prefix="lepetpal-bench-record-"))
    s = Settings()
    model = dataclasses.replace(s.model, mode="scripted")
    if args.policy == "tiny":
        model = dataclasses.replace(s.model, path=str(build_test_policy(tmp / "tiny-smolvla")),
                                    fallback_to_scripted=False)
    s = dataclasses.replace(
        s, model=model, logging=dataclasses.replace(s.logging, dir=str(tmp / "logs")),
        recording=dataclasses.replace(s.recording, root=str(tmp / "dataset"), enabled=False),
        cameras=with_camera_source(s, args.camera_source),
    )
    s = with_bench_control(s, args)
    batches: list[TelemetryBatch] = []
    spans: dict[str, tuple[float, float]] = {}
    steal: dict[str, float | None] = {}  # % of the CPUs the hypervisor took during each phase
    stop_busy = threading.Event()
    with SimArm.start(wire_time=True) as sim:
        client = EngineClient.spawn(s, sim_port=sim.port)
        try:
            if not wait(client, batches, lambda b: b.model is not None and b.model.phase in ("ready", "fallback"),
                        300.0):
                print("the engine did not become ready; see", client.log_path)
                return 1
            if not args.no_busy:
                threading.Thread(target=busy_ui, args=(stop_busy,), daemon=True).start()
            spans["off"] = _phase(client, batches, args.duration, wait, steal, "off")
            client.send(SetRecording(on=True))
            time.sleep(8.0)  # the recorder process starts and imports LeRobot before the episode
            spans["on"] = _phase(client, batches, args.duration, wait, steal, "on")
            client.send(SetRecording(on=False))
            spans["encode"] = _phase(client, batches, args.duration, wait, steal, "encode")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # wait for the save, for the frame count
                batches.extend(client.poll(0.2))
                client.send(Heartbeat())
                rec = next((b.recording for b in reversed(batches) if b.recording is not None), None)
                if rec is not None and rec.episodes >= 1 and not rec.saving:
                    break
        finally:
            stop_busy.set()
            client.close(timeout=300.0)
    ticks = [r for r in read_log(client.log_path) if r.get("type") == "tick" and r.get("late_s") is not None]
    status: RecordingStatus | None = next((b.recording for b in reversed(batches) if b.recording is not None), None)
    result: dict[str, Any] = {"policy": args.policy, "controlling_process_busy": not args.no_busy,
                              "phase_s": args.duration, "camera": f"{args.camera_source} 640x480", "store": s.recording.store,
                              "codec": s.recording.codec, "realtime_wakeup": s.control.realtime_wakeup, "phases": {}}
    print(machine_line())
    print(f"policy {args.policy}; camera {args.camera_source} 640x480 recorded as {s.recording.store} ({s.recording.codec}); "
          f"controlling process busy: {not args.no_busy}; realtime wakeup: {s.control.realtime_wakeup}")
    for name, (t0, t1) in spans.items():
        span = [r for r in ticks if t0 <= r["t"] <= t1]
        late = [r["late_s"] * 1000 for r in span]
        starved = sum(bool(r.get("starved")) for r in span)
        result["phases"][name] = {"ticks": len(span), "starved_ticks": starved,
                                  "tick_jitter_ms": {"p50": percentile(late, 50), "p99": percentile(late, 99),
                                                     "max": max(late) if late else None},
                                  "host_steal_percent": steal.get(name)}
        st = steal.get(name)
        print(f"recording {name:<7} ticks {len(span):5d}  starved {starved:3d}  jitter p50 {percentile(late, 50):.3f} ms"
              f"  p99 {percentile(late, 99):.3f} ms  max {max(late) if late else float('nan'):.3f} ms"
              f"  host steal {'n/a' if st is None else f'{st:.1f} %'}")
    if status is not None:
        result.update(episodes_saved=status.episodes, ticks_dropped=status.dropped, recorder_error=status.error)
        print(f"episodes saved {status.episodes}; ticks dropped {status.dropped}" +
              (f"; recorder error: {status.error}" if status.error else ""))
    result["load_average_1min"] = os.getloadavg()[0]
    result["session_log"] = str(client.log_path)
    print(f"machine load average (1 min) at the end: {result['load_average_1min']:.2f} on {os.cpu_count()} cores")
    name = "control_loop_record" + variant(args)
    print(f"written to {write_result(name, result)}")
    return 0
