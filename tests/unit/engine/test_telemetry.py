"""Session log, its summary (also through `lepetpal log summary`) and telemetry coalescing."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from lepetpal_tui.cli import main
from lepetpal_tui.engine.publish import TelemetryCoalescer
from lepetpal_tui.engine.session_log import SessionLog, read_log, summarize
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    ChunkSample,
    EngineEvent,
    EngineSnapshot,
    EngineState,
    EStop,
    EventKind,
    InferenceTiming,
    TickSample,
)


def _tick(t: float, starved: bool = False, clamped: int = 0) -> TickSample:
    return TickSample(t, 1 / 30, 0.001, (0.0,) * 6, (1.0,) * 6, True,
                      tuple(i < clamped for i in range(6)), starved, 10)


def _write_log(path: Path, torn: bool) -> None:
    log = SessionLog(path, Settings())
    for i in range(100):
        log.tick(_tick(i / 30, starved=(i == 50), clamped=2 if i < 3 else 0), EngineState.RUNNING)
    for ms in (100, 200, 900):
        log.chunk(ChunkSample(1.0, InferenceTiming(model_s=ms / 1000), 50, 20, "task"))
    log.command(EStop(), 2.0)
    log.event(EngineEvent(2.0, "error", "boom", "fix it"))
    if torn:
        log.tick(_tick(100 / 30), EngineState.RUNNING)  # then a torn line, as after kill -9
        assert log.sync()
        with path.open("a", encoding="utf-8") as fh:
            fh.write('{"type":"tick","t":9')
    else:
        log.close(ticks=100)


def test_ticks_never_wait_for_a_stalled_disk(tmp_path: Path) -> None:
    """The log is a pipe nobody reads yet: a stand-in for a disk that blocks writes (dirty-page
    throttling while the recorder encodes). The ticks still go through at once; the writer catches up,
    in order, once the other end reads."""
    fifo = tmp_path / "stalled.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the log's open does not block
    log = SessionLog(fifo, Settings())
    n = 3000  # ~0.5 MB of lines: far past the pipe's 64 KB, where a write() in tick() would block
    done = threading.Event()

    def ticks() -> None:
        for i in range(n):
            log.tick(_tick(i / 30), EngineState.RUNNING)
        done.set()

    threading.Thread(target=ticks, daemon=True).start()
    assert done.wait(10.0), "tick() blocked on the stalled log"
    os.set_blocking(reader, True)
    chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(reader, 65536), b"")))
    drain.start()
    log.close(ticks=n)
    drain.join(10.0)
    os.close(reader)
    recs = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    assert [r["type"] for r in (recs[0], recs[-1])] == ["header", "end"]
    assert [r["t"] for r in recs if r["type"] == "tick"] == [round(i / 30, 6) for i in range(n)]


@pytest.mark.parametrize("torn", [False, True])
def test_summary_figures(tmp_path: Path, torn: bool) -> None:
    path = tmp_path / "s.jsonl"
    _write_log(path, torn)
    s = summarize(path)
    assert s.ticks == (101 if torn else 100)
    assert s.starved_ticks == 1 and s.clamps == 6 and s.estops == 1 and s.errors == 1
    assert s.chunks == 3 and s.chunk_latency_p50_s == pytest.approx(0.2) and s.chunk_latency_p99_s == pytest.approx(0.9)
    assert s.tick_period_p50_s == pytest.approx(1 / 30, abs=1e-5)
    assert s.ended_cleanly is (not torn)
    header = next(read_log(path))
    assert header["settings"]["control"]["rate_hz"] == 30.0 and header["lerobot"] == "0.6.1"


def test_log_summary_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path / "session-1.jsonl", torn=False)
    assert main(["log", "summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "starved ticks   1" in out and "p50 200.0 ms  p99 900.0 ms" in out
    assert main(["log", "summary", str(tmp_path / "session-1.jsonl"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ticks"] == 100 and "settings" not in data["header"]
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    assert main(["log", "summary", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a lepetpal session log" in err and "Traceback" not in err
    binary = tmp_path / "random.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["log", "summary", str(binary)]) == 2
    assert "not a lepetpal session log" in capsys.readouterr().err
    # A real log with its last line torn inside a multi-byte character: the rest is still summarised.
    torn = tmp_path / "session-2.jsonl"
    _write_log(torn, torn=False)
    with torn.open("ab") as fh:
        fh.write(b'{"type": "event", "message": "\xe2\x82')
    assert main(["log", "summary", str(torn)]) == 0
    assert "starved ticks   1" in capsys.readouterr().out


def test_coalescer_batches_and_bounds_history() -> None:
    c = TelemetryCoalescer(max_ticks=50)
    for i in range(120):
        c.add_tick(_tick(i))
    c.add_event(EngineEvent(0.0, "info", "hi"))
    b = c.take(EngineSnapshot(EngineState.RUNNING, tick_count=120))
    assert len(b.ticks) == 50 and b.ticks[-1].t == 119 and b.tick_count == 120 and len(b.events) == 1
    assert not c.pending()
    assert c.take(EngineSnapshot(EngineState.RUNNING)).ticks == []


def _format_1_log(path: Path) -> None:
    """A session log as the app wrote it before the redesign (log format 1: untyped command fields)."""
    recs: list[dict[str, object]] = [{"type": "header", "wall_time": 0.0, "t": 0.0, "lepetpal": "0.1.0", "settings": {}}]
    for i in range(30):
        recs.append({"type": "tick", "t": i / 30, "period_s": 1 / 30, "work_s": 0.001, "state": "RUNNING",
                     "measured": [0.0] * 6, "goal": [0.0] * 6, "written": True, "clamped": [], "starved": False,
                     "queue": 10, "speed": 1.0})
    recs.append({"type": "command", "t": 0.5, "kind": "estop", "task": "", "flag": False, "name": "",
                 "go_home": False, "sent_at": 0.5, "reason": ""})
    recs.append({"type": "command", "t": 0.6, "kind": "estop_torque_off", "task": "", "flag": False, "name": "",
                 "go_home": False, "sent_at": 0.6, "reason": ""})
    recs.append({"type": "event", "t": 0.7, "level": "error", "message": "held", "fix": ""})
    recs.append({"type": "end", "t": 1.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_summary_reads_format_1_and_2_logs_alike(tmp_path: Path) -> None:
    old = tmp_path / "old.jsonl"
    _format_1_log(old)
    s1 = summarize(old)
    assert (s1.ticks, s1.estops, s1.errors, s1.ended_cleanly) == (30, 2, 1, True)

    new = tmp_path / "new.jsonl"
    log = SessionLog(new, Settings())
    for i in range(30):
        log.tick(_tick(i / 30), EngineState.RUNNING)
    log.command(EStop(sent_at=0.5), 0.5)
    log.command(EStop(torque_off=True, sent_at=0.6), 0.6)
    log.event(EngineEvent(0.7, "error", "held", kind=EventKind.BUS_FAULT))
    log.close()
    recs = list(read_log(new))
    assert recs[0]["log_format"] == 2
    assert [r["kind"] for r in recs if r["type"] == "command"] == ["estop", "estop_torque_off"]
    s2 = summarize(new)
    assert (s2.ticks, s2.estops, s2.errors, s2.ended_cleanly) == (s1.ticks, s1.estops, s1.errors, True)
