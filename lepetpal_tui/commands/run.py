"""`lepetpal run --headless --task "..."`: run the policy on the arm without the TUI, printing progress.

The engine runs in its own process (as under the TUI); this process prints what it reports. Ctrl-C stops
safely: the engine holds the arm and disconnects (torque per control.quit_torque_off).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lepetpal_tui.wire import RecordingStatus

HELP = "run the policy headless (no TUI) with printed progress; Ctrl-C stops safely"
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--headless", action="store_true", help="no TUI (the only mode of this command)")
    parser.add_argument("--task", required=True, help='what the arm should do, e.g. "pick up the ball"')
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds of running (default: until Ctrl-C)")
    parser.add_argument("--load-timeout", type=float, default=600.0, metavar="S",
                        help="give up if the arm and policy are not ready after S seconds (default 600)")
    parser.add_argument("--go-home", action="store_true", help="run the home macro before disconnecting")
    parser.add_argument("--episodes", type=int, default=None, metavar="N",
                        help="evaluate: N episodes, home between them, s / f marks or timed out, a summary")
    parser.add_argument("--episode-seconds", type=float, default=60.0, metavar="S",
                        help="with --episodes: an episode not marked within S seconds is timed out (default 60)")
    parser.add_argument("--record", default=None, metavar="DIR",
                        help="record every episode into the LeRobot dataset at DIR (recording.enabled, .root)")


class _HungUp(Exception):
    """SIGHUP: this terminal went away (SSH dropped, the window closed)."""


def _on_hangup(signum: int, frame: object) -> None:
    raise _HungUp


def _print(msg: str) -> None:
    print(msg, flush=True)


class _Progress:
    """Folds telemetry batches into what the operator sees."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.state = ""
        self.ready = False
        self.failed = ""
        self.tick_count = 0
        self.starved = 0
        self.clamps = 0
        self.last_chunk_ms: float | None = None
        self.phase = ""
        self.errors = 0
        self.speed = 1.0
        self.speed_min: float | None = None  # over running ticks
        self.recording: RecordingStatus | None = None  # the newest recorder status
        self.fallback = ""  # why the policy did not load, when the scripted demo ran instead

    def feed(self, batch: Any) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f} s]"
        if batch.state != self.state:
            self.state = str(batch.state)
            _print(f"{stamp} state {self.state}" + (f" ({batch.hold_reason})" if batch.hold_reason else ""))
        m = batch.model
        if m is not None and m.phase != self.phase:
            self.phase = m.phase
            detail = m.message or m.error
            _print(f"{stamp} model {m.phase}" + (f": {detail}" if detail else ""))
            if m.phase == "fallback" and m.error and m.error != detail:
                # The scripted demo runs instead: say why, or the run looks like a policy run that worked.
                self.fallback = m.error + (f" Fix: {m.fix}" if m.fix else "")
                _print(f"{stamp} model fallback, because: {self.fallback}")
            if m.usable:
                self.ready = True
            if m.phase == "failed":
                self.failed = f"{m.error} {m.fix}".strip()
        for e in batch.events:
            _print(f"{stamp} {e.level}: {e.message}" + (f" Fix: {e.fix}" if e.fix else ""))
            if e.level == "error":
                self.errors += 1
                if e.kind.fatal_at_start:
                    self.failed = e.message + (f" {e.fix}" if e.fix else "")
        for c in batch.chunks:
            self.last_chunk_ms = c.timing.total_s * 1000
        for t in batch.ticks:
            if t.goal is not None and self.state in ("RUNNING", "DRY-RUN"):
                self.speed_min = t.speed if self.speed_min is None else min(self.speed_min, t.speed)
        if batch.ticks:
            self.speed = batch.ticks[-1].speed
        if batch.recording is not None:
            self.recording = batch.recording
        self.tick_count = batch.tick_count
        self.starved = batch.starved_ticks
        self.clamps = batch.clamp_count

    def line(self) -> str:
        chunk = "n/a" if self.last_chunk_ms is None else f"{self.last_chunk_ms:.0f} ms"
        return (f"[{time.monotonic() - self.t0:6.1f} s] {self.state:<8} ticks {self.tick_count}  "
                f"starved {self.starved}  clamps {self.clamps}  last chunk {chunk}  speed {self.speed:.2f}x"
                + ("" if self.speed_min is None else f" (min {self.speed_min:.2f}x)"))


def run(args: argparse.Namespace) -> int:
    from lepetpal_tui.cli import settings_from_args
    from lepetpal_tui.engine.launcher import EngineClient, EngineStartError
    from lepetpal_tui.engine.session_log import LogError, summarize
    from lepetpal_tui.wire import EngineState, Heartbeat, Start

    settings = settings_from_args(args)
    task = args.task.strip()
    if not task:
        print("lepetpal run: --task is empty. Say what the arm should do, e.g. --task \"pick up the ball\".",
              file=sys.stderr)
        return 2
    if args.record:
        from lepetpal_tui.record.evaluate import with_recording

        settings = with_recording(settings, args.record)
    if settings.recording.enabled:
        from lepetpal_tui.record.dataset import choose_root, unwritable

        if why := unwritable(choose_root(settings.recording)):
            print(f"lepetpal run: {why}", file=sys.stderr)
            return 2
    if args.episodes is not None:
        from lepetpal_tui.record.evaluate import evaluate

        return evaluate(args, settings, task)
    if args.duration is not None and args.duration <= 0:
        print("lepetpal run: --duration must be a positive number of seconds.", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    progress = _Progress(t0)
    code = 0
    # With --sim the engine starts the simulated arm itself: both then outlive a hangup of this
    # terminal long enough to hold and disconnect (see engine.process).
    try:
        client = EngineClient.spawn(settings)
    except EngineStartError as exc:
        print(f"lepetpal run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print(f"session log: {client.log_path}")
    started_at: float | None = None
    last_line = 0.0
    hung_up = False
    signal.signal(signal.SIGHUP, _on_hangup)
    try:
        while True:
            for batch in client.poll(0.1):
                progress.feed(batch)
            # Headless, the main loop is the "UI": it stops beating if it hangs (safety.ui_heartbeat_s).
            client.send(Heartbeat())
            now = time.monotonic()
            if progress.failed or not client.alive:
                code = EXIT_FAILED
                break
            if started_at is None:
                if progress.ready and progress.state == EngineState.READY.value:
                    client.send(Start(task=task))
                    started_at = now
                elif progress.state in (EngineState.ERROR.value,):
                    code = EXIT_FAILED
                    break
                elif now - t0 > args.load_timeout:
                    _print(f"gave up: not ready after {args.load_timeout:g} s (raise --load-timeout)")
                    code = EXIT_FAILED
                    break
                continue
            if now - last_line >= 1.0:
                _print(progress.line())
                last_line = now
            if progress.state == EngineState.ERROR.value:
                code = EXIT_FAILED
                break
            if args.duration is not None and now - started_at >= args.duration:
                break
    except KeyboardInterrupt:
        _print("Ctrl-C: holding the arm and disconnecting ...")
    except _HungUp:
        hung_up = True
    finally:
        if hung_up:
            # Nobody is watching any more: the engine takes the UI-lost path (hold, then disconnect per
            # [safety]) on its own; printing to a dead terminal could only fail.
            client.abandon("the terminal of `lepetpal run` hung up (SIGHUP)")
            os._exit(128 + signal.SIGHUP)
        for batch in client.close(go_home=args.go_home, timeout=10.0):
            progress.feed(batch)
    _print(progress.line())
    try:
        summary = summarize(client.log_path)
    except LogError as exc:
        print(f"lepetpal run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print("summary:")
    for line in summary.lines():
        _print("  " + line)
    if progress.fallback:
        print(f"lepetpal run: the policy did not load, so the scripted demo motion ran instead: "
              f"{progress.fallback}", file=sys.stderr)
    if progress.failed:
        print(f"lepetpal run: {progress.failed}", file=sys.stderr)
    if progress.recording is not None and progress.recording.error:
        # Asked to record, and the dataset is missing what this run did: not a success for a script.
        print(f"lepetpal run: recording failed: {progress.recording.error}", file=sys.stderr)
        return code or EXIT_FAILED
    return code
