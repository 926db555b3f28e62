"""The session log (JSON Lines), its reader and `lepetpal log summary`.

The engine writes a header (settings, checkpoint, versions, `log_format`), one line per tick, one per
chunk, command and event. The callers only queue a record: a writer thread formats it and writes it,
flushed to the OS at once, so a kill -9 of any process loses at most what the writer had not written yet
(normally nothing but the line in flight); `read_log` skips a torn last line.

Why a writer thread: the actuator logs every tick, and a write() to a file can block for as long as the
kernel likes (dirty-page throttling, the journal) while another process writes a lot, which is what the
recorder does (PNG staging, then video encoding). The tick must never wait for the disk.

Log formats: 1 (until the redesign) wrote a command as its `Command` fields (`kind`, `task`, `flag`,
`name`, `go_home`, `reason`); 2 writes `kind` plus the typed command's own fields (`task`, `torque_off`,
`on`, ...) and events with their `kind`. The reader only relies on what both have (`type`, `t`, a
command's `kind`, an event's `level`), so it reads either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import platform
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from lepetpal_tui import __version__
from lepetpal_tui.settings import Settings
from lepetpal_tui.stats import percentile
from lepetpal_tui.wire import (
    ChunkSample,
    Command,
    EngineEvent,
    EngineState,
    ModelStatus,
    TickSample,
    command_name,
)

LOG_FORMAT = 2

# --------------------------------------------------------------------------------------------- session log


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def checkpoint_identity(path: str, revision: str) -> dict[str, Any]:
    """Identify the checkpoint: a hub id + revision, or for a local folder a content hash.

    The hash covers config.json and the first 16 MiB of model.safetensors plus its size: enough to tell
    checkpoints apart without reading gigabytes at every start.
    """
    ident: dict[str, Any] = {"source": path or "(built-in demo)", "revision": revision}
    folder = Path(path).expanduser() if path else None
    if folder is not None and folder.is_dir():
        h = hashlib.sha256()
        for name in ("config.json", "model.safetensors"):
            f = folder / name
            if f.is_file():
                h.update(name.encode())
                h.update(str(f.stat().st_size).encode())
                with f.open("rb") as fh:
                    h.update(fh.read(16 * 1024 * 1024))
        ident["revision"] = "local"
        ident["sha256"] = h.hexdigest()[:16]
    return ident


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no NaN; keep it visible
    if isinstance(obj, EngineState):
        return obj.value
    return obj


def _r(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [round(v, 4) for v in values]


class SessionLog:
    """Append-only JSON Lines log; safe to call from several threads."""

    def __init__(self, path: Path, settings: Settings, *, log_ticks: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()  # None: close
        self._closed = False
        self._log_ticks = log_ticks
        self._writer = threading.Thread(target=self._write_loop, name="session-log-writer", daemon=True)
        self._writer.start()
        settings_dict = _jsonable(dataclasses.replace(settings, origins={}))
        settings_dict.pop("origins", None)
        self._write(
            {
                "type": "header",
                "log_format": LOG_FORMAT,
                "wall_time": time.time(),
                "t": time.monotonic(),
                "lepetpal": __version__,
                "lerobot": _package_version("lerobot"),
                "python": platform.python_version(),
                "checkpoint": (
                    {"source": "scripted", "revision": ""}
                    if settings.model.mode == "scripted"
                    else checkpoint_identity(settings.model.path, settings.model.revision)
                ),
                "settings": settings_dict,
            }
        )

    @classmethod
    def create(cls, settings: Settings, directory: str | None = None) -> SessionLog:
        folder = Path(directory or settings.logging.dir).expanduser()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(folder / f"session-{stamp}-{int(time.time() * 1000) % 1000:03d}.jsonl", settings,
                   log_ticks=settings.logging.log_ticks)

    def _write(self, record: dict[str, Any]) -> None:
        if not self._closed:
            self._queue.put(record)

    def _write_loop(self) -> None:
        """Write what is queued, in order, with one write + flush per wake-up (to the OS: survives a
        kill -9 of this process); ends at the close marker."""
        from lepetpal_tui.engine.actuator import raise_thread_priority

        # At the tick's own nice: a writer preempted while it holds the GIL (formatting a line) would make
        # the tick wait at its next deadline (a GIL priority inversion; at nice 0 it cost ~1 ms at p99 with
        # recording on, 2-core Intel Xeon). Its write() releases the GIL, so a slow disk stalls only it.
        raise_thread_priority()
        fh = self._fh
        assert fh is not None
        done = False
        while not done:
            item: _Item | None = self._queue.get()
            lines: list[str] = []
            written: list[threading.Event] = []
            while True:
                if item is None:
                    done = True
                    break
                if isinstance(item, threading.Event):
                    written.append(item)
                else:
                    # default=str: a value JSON cannot hold is written as text rather than stopping the writer
                    lines.append(json.dumps(_record(item), separators=(",", ":"), default=str) + "\n")
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            with contextlib.suppress(OSError, ValueError):  # a full disk: the engine goes on, the log says less
                fh.write("".join(lines))
                fh.flush()
            for event in written:
                event.set()
        with contextlib.suppress(OSError):
            fh.close()

    def tick(self, s: TickSample, state: EngineState, late_s: float | None = None) -> None:
        """Queue a tick (one put; formatted by the writer: the actuator calls this every tick)."""
        if self._log_ticks and not self._closed:
            self._queue.put((s, state, late_s))

    def chunk(self, c: ChunkSample) -> None:
        self._write({"type": "chunk", **_jsonable(c)})

    def event(self, e: EngineEvent) -> None:
        self._write({"type": "event", **_jsonable(e)})

    def command(self, cmd: Command, t: float) -> None:
        self._write({"type": "command", "t": t, "kind": command_name(cmd), **_jsonable(cmd)})

    def model(self, status: ModelStatus) -> None:
        self._write({"type": "model", "t": time.monotonic(), **_jsonable(status)})

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until everything logged so far is written (never called on the tick path)."""
        if self._closed:
            self._writer.join(timeout)
            return not self._writer.is_alive()
        written = threading.Event()
        self._queue.put(written)
        return written.wait(timeout)

    def close(self, timeout: float = 10.0, **summary: Any) -> None:
        """Write the end record and everything before it, then close the file. Safe to call twice."""
        if self._closed:
            return
        self._write({"type": "end", "t": time.monotonic(), **summary})
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout)
        self._fh = None


_Item = dict[str, Any] | tuple[TickSample, EngineState, float | None] | threading.Event


def _record(item: dict[str, Any] | tuple[TickSample, EngineState, float | None]) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    s, state, late_s = item
    return _tick_record(s, state, late_s)


def _tick_record(s: TickSample, state: EngineState, late_s: float | None) -> dict[str, Any]:
    return {
        "type": "tick",
        "t": round(s.t, 6),
        "late_s": None if late_s is None else round(late_s, 6),  # start vs its deadline
        "period_s": round(s.period_s, 6),
        "work_s": round(s.work_s, 6),
        "state": state.value,
        "measured": _r(s.measured),
        "goal": _r(s.goal),
        "written": s.written,
        "clamped": [i for i, c in enumerate(s.clamped) if c],
        "starved": s.starved,
        "queue": s.queue_depth,
        "speed": round(s.speed, 3),
    }


# ------------------------------------------------------------------------------------------ log summary


class LogError(Exception):
    """The file is not a session log; the message says what to do."""


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a session log; a torn line (process killed mid-write) is skipped."""
    try:
        # A line torn in the middle of a character (process killed mid-write) must not end the reading:
        # undecodable bytes become U+FFFD, and that line then fails to parse and is skipped.
        fh = path.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LogError(f"Cannot open {path}: {exc.strerror}. Check the path (session logs are in logs/).") from None
    with fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def _pct(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


@dataclass(frozen=True)
class LogSummary:
    header: dict[str, Any]
    duration_s: float
    ticks: int
    written_ticks: int
    starved_ticks: int
    clamps: int
    estops: int
    errors: int
    chunks: int
    chunk_latency_p50_s: float | None
    chunk_latency_p99_s: float | None
    tick_period_p50_s: float | None
    tick_period_p99_s: float | None
    ended_cleanly: bool
    speed_p50: float | None = None  # playback speed factor over running ticks
    speed_min: float | None = None

    def lines(self) -> list[str]:
        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v * 1000:.1f} ms"

        ck = self.header.get("checkpoint", {})
        return [
            f"lepetpal {self.header.get('lepetpal', '?')}, lerobot {self.header.get('lerobot', '?')}, "
            f"checkpoint {ck.get('source', '?')}" + (f" @ {rev}" if (rev := ck.get('sha256') or ck.get('revision')) else ""),
            f"duration        {self.duration_s:.1f} s",
            f"ticks           {self.ticks} ({self.written_ticks} wrote a goal)",
            f"starved ticks   {self.starved_ticks}",
            f"clamps          {self.clamps}",
            f"e-stops         {self.estops}",
            f"errors          {self.errors}",
            f"chunks          {self.chunks}",
            f"chunk latency   p50 {ms(self.chunk_latency_p50_s)}  p99 {ms(self.chunk_latency_p99_s)}",
            f"tick period     p50 {ms(self.tick_period_p50_s)}  p99 {ms(self.tick_period_p99_s)}",
            "playback speed  " + ("n/a" if self.speed_p50 is None or self.speed_min is None
                                  else f"p50 {self.speed_p50:.2f}x  min {self.speed_min:.2f}x"),
            "ended cleanly   " + ("yes" if self.ended_cleanly else "no (process killed or still running)"),
        ]


def summarize(path: Path) -> LogSummary:
    header: dict[str, Any] | None = None
    ticks = written = starved = clamps = estops = errors = 0
    periods: list[float] = []
    latencies: list[float] = []
    speeds: list[float] = []
    first_t: float | None = None
    last_t: float | None = None
    ended = False
    for rec in read_log(path):
        kind = rec.get("type")
        if kind == "header" and header is None:
            header = rec
        elif kind == "tick" and isinstance(rec.get("t"), int | float):
            ticks += 1
            first_t = rec["t"] if first_t is None else first_t
            last_t = rec["t"]
            written += bool(rec.get("written"))
            starved += bool(rec.get("starved"))
            clamps += len(rec.get("clamped", ()))
            if ticks > 1:
                periods.append(float(rec.get("period_s", 0.0)))
            if rec.get("state") in (EngineState.RUNNING.value, EngineState.DRY_RUN.value) and isinstance(rec.get("speed"), int | float):
                speeds.append(float(rec["speed"]))
        elif kind == "chunk":
            timing = rec.get("timing", {})
            latencies.append(sum(float(timing.get(k, 0.0)) for k in ("preprocess_s", "model_s", "postprocess_s")))
        elif kind == "command" and rec.get("kind") in ("estop", "estop_torque_off"):
            estops += 1
        elif kind == "event" and rec.get("level") == "error":
            errors += 1
        elif kind == "end":
            ended = True
    if header is None:
        raise LogError(
            f"{path} has no session header: it is not a lepetpal session log (or is empty). "
            "Pass a logs/session-*.jsonl file."
        )
    return LogSummary(
        header=header,
        duration_s=(last_t - first_t) if first_t is not None and last_t is not None else 0.0,
        ticks=ticks,
        written_ticks=written,
        starved_ticks=starved,
        clamps=clamps,
        estops=estops,
        errors=errors,
        chunks=len(latencies),
        chunk_latency_p50_s=_pct(latencies, 50),
        chunk_latency_p99_s=_pct(latencies, 99),
        tick_period_p50_s=_pct(periods, 50),
        tick_period_p99_s=_pct(periods, 99),
        ended_cleanly=ended,
        speed_p50=_pct(speeds, 50),
        speed_min=min(speeds) if speeds else None,
    )
