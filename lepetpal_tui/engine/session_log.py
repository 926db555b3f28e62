"""The session log (JSON Lines), its reader and `lepetpal log summary`.

The engine writes a header (settings, checkpoint, versions, `log_format`), one line per tick, one per
chunk, command and event. Every line is flushed to the OS when written, so a kill -9 of any process loses
at most the line being written; `read_log` skips a torn last line.

Log formats: 1 (until the redesign) wrote a command as its `Command` fields (`kind`, `task`, `flag`,
`name`, `go_home`, `reason`); 2 writes `kind` plus the typed command's own fields (`task`, `torque_off`,
`on`, ...) and events with their `kind`. The reader only relies on what both have (`type`, `t`, a
command's `kind`, an event's `level`), so it reads either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
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
        self._lock = threading.Lock()
        self._log_ticks = log_ticks
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
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            if self._fh is None:
                return
            self._fh.write(line + "\n")
            self._fh.flush()  # to the OS: survives kill -9 of this process

    def tick(self, s: TickSample, state: EngineState, late_s: float | None = None) -> None:
        if not self._log_ticks:
            return
        self._write(
            {
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
        )

    def chunk(self, c: ChunkSample) -> None:
        self._write({"type": "chunk", **_jsonable(c)})

    def event(self, e: EngineEvent) -> None:
        self._write({"type": "event", **_jsonable(e)})

    def command(self, cmd: Command, t: float) -> None:
        self._write({"type": "command", "t": t, "kind": command_name(cmd), **_jsonable(cmd)})

    def model(self, status: ModelStatus) -> None:
        self._write({"type": "model", "t": time.monotonic(), **_jsonable(status)})

    def close(self, **summary: Any) -> None:
        self._write({"type": "end", "t": time.monotonic(), **summary})
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


# ------------------------------------------------------------------------------------------ log summary


class LogError(Exception):
    """The file is not a session log; the message says what to do."""


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a session log; a torn line (process killed mid-write) is skipped."""
    try:
        fh = path.open(encoding="utf-8")
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
