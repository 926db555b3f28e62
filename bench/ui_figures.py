"""UI figures: time to first screen, UI-process CPU, terminal bytes, camera pane on and off, actuator jitter.

Runs the real `lepetpal` command in a pseudo-terminal (120x40), as an operator would:
  1. time to first screen: from spawning `lepetpal --sim` to the app's first paint (banner, joints, task
     field and footer; the app writes the time to $LEPETPAL_UI_STATS), and to the full screen (the other
     panes, mounted right after the first paint), five runs, medians; the engine keeps loading behind it.
  2. CPU of the UI process while RUNNING with synthetic telemetry at 30 Hz ticks / 20 Hz batches
     (`--fake-telemetry 30`: no engine process, so only the UI is measured), over a fixed window.
  3. redraw rate and bytes written to the terminal per second over the same window.
  4. the real engine on the simulated arm (scripted policy), RUNNING, with the Camera pane off and on
     (key c; half blocks at [ui] camera_fps, 5 by default): UI-process CPU, terminal KiB/s, camera frames
     drawn, and the actuator's jitter (how late each tick started, from the session log) in the same
     window, so "the camera costs the tick nothing" is a measured claim.
Prints the figures and writes bench/results/<vendor>-<cpu kind>/ui_figures.json. The machine may be shared: run it
once or twice, and read the figures with the load average it prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from machine import machine_line, write_result  # bench/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
LEPETPAL = [sys.executable, "-m", "lepetpal_tui"]
COLS, ROWS = 120, 40
F6 = b"\x1b[17~"


class PtyApp:
    """`lepetpal ...` on a pty whose output is drained (and counted) by a thread."""

    def __init__(self, args: list[str], stats_path: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", LEPETPAL_UI_STATS=str(stats_path))
        self.started = time.time()
        self.proc = subprocess.Popen(
            [*LEPETPAL, *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True
        )
        os.close(slave)
        self.stats_path = stats_path
        self.bytes = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.bytes += len(data)

    def out_bytes(self) -> int:
        with self._lock:
            return self.bytes

    def keys(self, data: bytes) -> None:
        os.write(self.master, data)

    def stats(self, timeout: float = 60.0, key: str = "first_paint_unix") -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                data: dict[str, Any] = json.loads(self.stats_path.read_text())
                if data.get(key):
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        raise RuntimeError(f"the app wrote no {key} within {timeout:.0f} s")

    def finish(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            os.close(self.master)


def first_screen(runs: int, tmp: Path) -> tuple[list[float], list[float]]:
    """Seconds from spawning `lepetpal --sim` to its first paint (banner, joints, task field, footer) and
    to the full screen (every pane mounted and painted, just after), one pair per run."""
    firsts, fulls = [], []
    for i in range(runs):
        app = PtyApp(["--sim"], tmp / f"first{i}.json")
        data = app.stats(key="full_screen_unix")
        firsts.append(data["first_paint_unix"] - app.started)
        fulls.append(data["full_screen_unix"] - app.started)
        time.sleep(0.5)
        app.keys(b"q")  # still, so it quits without asking (and closes the engine it started)
        app.finish()
    return firsts, fulls


def running_load(window_s: float, tmp: Path) -> dict[str, float]:
    app = PtyApp(["ui", "--fake-telemetry", "30"], tmp / "run.json")
    app.stats()
    time.sleep(1.0)
    app.keys(b"bench the ui\r")  # the task field has focus at start: Enter starts RUNNING
    time.sleep(1.5)
    proc = psutil.Process(app.proc.pid)
    cpu0 = proc.cpu_times()
    t0, b0 = time.monotonic(), app.out_bytes()
    before = app.stats()  # written at first paint; redraws are counted again at exit
    time.sleep(window_s)
    cpu1 = proc.cpu_times()
    t1, b1 = time.monotonic(), app.out_bytes()
    app.keys(F6)
    time.sleep(0.5)
    app.keys(b"q")
    # The invented engine answers no command (it stays RUNNING), so quit asks first: "y" = stop and quit.
    time.sleep(0.5)
    app.keys(b"y")
    rc = app.finish()
    after = app.stats(key="written_unix")
    if after["written_unix"] == before["written_unix"]:
        raise RuntimeError("the app did not write its counters at exit (it did not quit cleanly)")
    span = after["written_unix"] - before["first_paint_unix"]
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "cpu_percent_of_one_core": 100.0 * busy / (t1 - t0),
        "terminal_kib_per_s": (b1 - b0) / 1024 / (t1 - t0),
        "redraws_per_s": after["redraws"] / span,
        "telemetry_batches_per_s": after["batches"] / span,
        "window_s": t1 - t0,
        "exit_code": rc,
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


def engine_load(window_s: float, tmp: Path, camera: bool) -> dict[str, Any]:
    """`lepetpal --sim` with the scripted policy, RUNNING; the camera pane shown (c) or not."""
    name = "camera_on" if camera else "camera_off"
    logs = tmp / f"logs-{name}"
    config = tmp / f"{name}.toml"
    config.write_text(f'[logging]\ndir = "{logs}"\n\n[ui]\ncamera = "halfblock"\n', encoding="utf-8")
    app = PtyApp(["--config", str(config), "--sim", "--model-mode", "scripted"], tmp / f"{name}.json")
    app.stats()
    deadline = time.time() + 90
    while time.time() < deadline and not any(logs.glob("session-*.jsonl")):
        time.sleep(0.2)
    time.sleep(6.0)  # connect + policy ready on a busy 2-core machine
    app.keys(b"bench the camera\r")
    time.sleep(1.0)
    if camera:
        app.keys(b"c")
    time.sleep(2.0)
    proc = psutil.Process(app.proc.pid)
    cpu0 = proc.cpu_times()
    t0, b0 = time.monotonic(), app.out_bytes()
    time.sleep(window_s)
    cpu1 = proc.cpu_times()
    t1, b1 = time.monotonic(), app.out_bytes()
    app.keys(F6)
    time.sleep(1.0)
    app.keys(b"q")
    rc = app.finish(40.0)
    after = app.stats(key="written_unix")
    late: list[float] = []
    states: dict[str, int] = {}
    for log in logs.glob("session-*.jsonl"):
        for line in log.read_text(encoding="utf-8").splitlines():
            if '"type":"tick"' not in line:
                continue
            rec = json.loads(line)
            if t0 <= rec["t"] <= t1 and rec.get("late_s") is not None:
                late.append(float(rec["late_s"]) * 1000.0)
                states[rec["state"]] = states.get(rec["state"], 0) + 1
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "cpu_percent_of_one_core": 100.0 * busy / (t1 - t0),
        "terminal_kib_per_s": (b1 - b0) / 1024 / (t1 - t0),
        "camera_frames_drawn": after.get("camera_frames", 0),
        "tick_late_ms": {"p50": _pct(late, 50), "p99": _pct(late, 99), "max": max(late, default=float("nan")),
                         "ticks": len(late), "states": states},
        "window_s": t1 - t0,
        "exit_code": rc,
    }


def main() -> int:
    load_avg = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        firsts, fulls = first_screen(5, tmp)
        load = running_load(10.0, tmp)
        # 20 s = 600 ticks: a p99 of 300 ticks is the third-worst tick, too noisy to compare.
        off = engine_load(20.0, tmp, camera=False)
        on = engine_load(20.0, tmp, camera=True)
    result: dict[str, Any] = {
        "terminal": f"{COLS}x{ROWS}",
        "load_average_at_start": load_avg,
        "first_screen_s": {"runs": firsts, "median": statistics.median(firsts)},
        "full_screen_s": {"runs": fulls, "median": statistics.median(fulls)},
        "running_30hz_fake_telemetry": load,
        "running_sim_engine_camera_off": off,
        "running_sim_engine_camera_on": on,
    }
    out = write_result("ui_figures", result)
    print(machine_line())
    print(f"time to first screen (lepetpal --sim): median {result['first_screen_s']['median']:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in firsts)}); every pane painted: median "
          f"{result['full_screen_s']['median']:.2f} s")
    print(f"UI process CPU while RUNNING, 30 Hz telemetry: {load['cpu_percent_of_one_core']:.1f} % of one core")
    print(f"redraw rate: {load['redraws_per_s']:.1f} /s (telemetry batches {load['telemetry_batches_per_s']:.1f} /s), "
          f"terminal output {load['terminal_kib_per_s']:.1f} KiB/s")
    for label, r in (("off", off), ("on ", on)):
        j = r["tick_late_ms"]
        print(f"sim engine RUNNING, camera pane {label}: UI CPU {r['cpu_percent_of_one_core']:.1f} % of one core, "
              f"terminal {r['terminal_kib_per_s']:.1f} KiB/s, camera frames drawn {r['camera_frames_drawn']}, "
              f"actuator tick late p50 {j['p50']:.2f} ms p99 {j['p99']:.2f} ms max {j['max']:.2f} ms "
              f"({j['ticks']} ticks)")
    print(f"load average at start {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f} (the machine is shared)")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
