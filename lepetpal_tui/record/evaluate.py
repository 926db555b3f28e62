"""Headless evaluation: `lepetpal run --headless --episodes N --episode-seconds S [--record DIR]`.

Runs N episodes of the task. Each ends with a key (s = success, f = failure; read from the terminal in
cbreak mode, or a line on a piped stdin) or, after S seconds, as "timed out"; an e-stop or a fault ends
it as a failure. Between episodes the arm goes home through the home macro (the same safety filter and
preconditions as the key in the TUI). With recording on, every episode is a dataset episode and its
outcome is kept with it. The summary: success rate, mean duration, e-stops and clamps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    EngineState,
    Heartbeat,
    MarkEpisode,
    Outcome,
    RecordingStatus,
    RunMacro,
    Start,
    Stop,
    TelemetryBatch,
)

EXIT_FAILED = 1
_KEYS: dict[str, Outcome] = {"s": "success", "f": "failure"}


@dataclass
class EpisodeResult:
    index: int
    outcome: Outcome
    duration_s: float
    estops: int
    clamps: int
    note: str = ""


def _print(msg: str) -> None:
    print(msg, flush=True)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Single keys from a terminal (cbreak, restored after), or characters from a pipe."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    saved = None
    if fd >= 0 and os.isatty(fd):
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    try:
        def read() -> str:
            if fd < 0:
                return ""
            try:
                ready, _, _ = select.select([fd], [], [], 0)
                return os.read(fd, 64).decode(errors="ignore").lower() if ready else ""
            except (OSError, ValueError):
                return ""
        yield read
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def with_recording(settings: Settings, root: str) -> Settings:
    """`--record DIR`: recording on, into DIR (a flag, so it wins over the file and the environment)."""
    import dataclasses

    rec = dataclasses.replace(settings.recording, enabled=True, root=root)
    origins = {**settings.origins, "recording.enabled": "flag --record", "recording.root": "flag --record"}
    return dataclasses.replace(settings, recording=rec, origins=origins)


def summary_lines(results: list[EpisodeResult]) -> list[str]:
    n = len(results)
    wins = sum(r.outcome == "success" for r in results)
    mean = sum(r.duration_s for r in results) / n if n else 0.0
    lines = [f"episodes        {n}",
             f"success rate    {wins}/{n}" + (f" ({100.0 * wins / n:.0f} %)" if n else ""),
             f"failures        {sum(r.outcome == 'failure' for r in results)}",
             f"timed out       {sum(r.outcome == 'timed out' for r in results)}",
             f"mean duration   {mean:.1f} s",
             f"e-stops         {sum(r.estops for r in results)}",
             f"clamps          {sum(r.clamps for r in results)}"]
    lines += [f"  episode {r.index}: {r.outcome}, {r.duration_s:.1f} s, {r.clamps} clamps"
              + (f" ({r.note})" if r.note else "") for r in results]
    return lines


class _Session:
    """The client plus the latest engine state, folded from the telemetry."""

    def __init__(self, client: Any, progress: Any) -> None:
        self.client = client
        self.progress = progress
        self.batch: TelemetryBatch | None = None

    def pump(self, timeout: float = 0.05) -> list[TelemetryBatch]:
        batches: list[TelemetryBatch] = self.client.poll(timeout)
        for b in batches:
            self.progress.feed(b)
            self.batch = b
        self.client.send(Heartbeat())
        return batches

    @property
    def state(self) -> str:
        return str(self.progress.state)

    def wait_state(self, states: tuple[EngineState, ...], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if self.state in {s.value for s in states}:
                return True
            if not self.client.alive:
                return False
        return False


def evaluate(args: argparse.Namespace, settings: Settings, task: str) -> int:
    from lepetpal_tui.commands.run import _HungUp, _on_hangup, _Progress
    from lepetpal_tui.engine.launcher import EngineClient, EngineStartError

    if args.episodes <= 0 or args.episode_seconds <= 0:
        print("lepetpal run: --episodes and --episode-seconds must be positive numbers.", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        client = EngineClient.spawn(settings)
    except EngineStartError as exc:
        print(f"lepetpal run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print(f"session log: {client.log_path}")
    session = _Session(client, _Progress(t0))
    results: list[EpisodeResult] = []
    code = 0
    signal.signal(signal.SIGHUP, _on_hangup)
    recording = settings.recording.enabled
    try:
        with _keys() as read_key:
            if not session.wait_state((EngineState.READY,), args.load_timeout) or session.progress.failed:
                _print(f"gave up: not ready ({session.progress.failed or session.state})")
                code = EXIT_FAILED
            for i in range(args.episodes if code == 0 else 0):
                result = _episode(session, read_key, task, i, args.episodes, args.episode_seconds)
                if result is None:
                    code = EXIT_FAILED
                    break
                results.append(result)
                if recording:
                    session.client.send(MarkEpisode(outcome=result.outcome))
                if session.state in (EngineState.ESTOP.value, EngineState.ERROR.value):
                    _print(f"stopping the evaluation: the engine is {session.state} (re-arm needed)")
                    break
                if i + 1 < args.episodes:
                    _print("going home ...")
                    session.client.send(RunMacro(name="home"))
                    session.wait_state((EngineState.MACRO,), 2.0)
                    if not session.wait_state((EngineState.READY,), 60.0):
                        _print(f"stopping the evaluation: home did not finish (state {session.state})")
                        break
    except KeyboardInterrupt:
        _print("Ctrl-C: holding the arm and disconnecting ...")
    except _HungUp:
        client.abandon("the terminal of `lepetpal run` hung up (SIGHUP)")
        os._exit(128 + signal.SIGHUP)
    finally:
        _print("closing (the last episode is saved first when recording) ...")
        for batch in client.close(go_home=args.go_home, timeout=120.0 if recording else 10.0):
            session.progress.feed(batch)
    _print("evaluation summary:")
    for line in summary_lines(results):
        _print("  " + line)
    if recording:
        _print(f"  dataset         {settings.recording.root} (repo id {settings.recording.repo_id})")
        lost = recording_loss(session.progress.recording, len(results))
        if lost:
            _print(f"  recording       {lost}")
            code = code or EXIT_FAILED
    return code


def recording_loss(status: RecordingStatus | None, episodes: int) -> str:
    """Why the dataset holds fewer episodes than were run ("" when every one was saved): a headless
    evaluation asked to record must not exit 0 with episodes missing."""
    if episodes == 0:
        return ""
    saved = 0 if status is None else status.episodes
    if status is not None and status.error:
        return f"FAILED after {saved} of {episodes} episodes: {status.error}"
    if saved < episodes:
        return (f"only {saved} of {episodes} episodes were saved; the others are missing from the dataset "
                "(see the session log and its .engine.log beside it).")
    return ""


def _episode(session: _Session, read_key: Any, task: str, i: int, n: int, seconds: float) -> EpisodeResult | None:
    before = session.batch
    estops0 = before.estop_count if before else 0
    clamps0 = before.clamp_count if before else 0
    session.client.send(Start(task=task))
    if not session.wait_state((EngineState.RUNNING, EngineState.DRY_RUN), 10.0):
        _print(f"episode {i}: the policy did not start (state {session.state})")
        return None
    started = time.monotonic()
    _print(f"episode {i + 1}/{n} running: press s (success) or f (failure); {seconds:g} s timeout")
    outcome: Outcome = "timed out"
    note = ""
    last_line = 0.0
    while True:
        session.pump()
        keys = read_key()
        hit = next((_KEYS[k] for k in keys if k in _KEYS), None)
        now = time.monotonic()
        if hit is not None:
            outcome = hit
            break
        if session.state not in (EngineState.RUNNING.value, EngineState.DRY_RUN.value):
            outcome, note = "failure", f"ended by {session.state}"
            break
        if now - started >= seconds:
            break
        if now - last_line >= 1.0:
            _print(session.progress.line())
            last_line = now
    duration = time.monotonic() - started
    if session.state in (EngineState.RUNNING.value, EngineState.DRY_RUN.value):
        session.client.send(Stop())
        session.wait_state((EngineState.READY,), 5.0)
    after = session.batch
    result = EpisodeResult(i, outcome, duration,
                           (after.estop_count if after else 0) - estops0,
                           (after.clamp_count if after else 0) - clamps0, note)
    _print(f"episode {i + 1}/{n}: {outcome} after {duration:.1f} s" + (f" ({note})" if note else ""))
    return result
