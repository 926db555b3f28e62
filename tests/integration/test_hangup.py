"""The terminal goes away under a running task (SSH dropped, `tmux kill-session`): the real app in tmux.

The hangup reaches the UI's session; the engine, in a session of its own, must hold the arm, log why,
disconnect per [safety] and write the end record, and nothing of the session may be left running.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from .app_session import TmuxApp, session_logs, write_config  # type: ignore[import-not-found]
from .engine.conftest import goal_writes  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow
DISCONNECT_S = 1.5
HOLD_MARGIN_S = 0.1  # the hold's own write, plus a tick write already under way


def _records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_end(tmp_path: Path, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = session_logs(tmp_path)
        if logs:
            recs = _records(logs[-1])
            if recs and recs[-1]["type"] == "end":
                return recs
        time.sleep(0.2)
    raise AssertionError(f"no end record in {session_logs(tmp_path)} after {timeout:.0f} s")


def _run_then_hang_up(args: list[str], tmp_path: Path) -> tuple[float, list[dict[str, Any]]]:
    app = TmuxApp(args, tmp_path)
    try:
        app.wait_for("READY", 120)
        app.type("wave hello")
        app.keys("Enter")
        app.wait_for("RUNNING", 30)
        time.sleep(1.0)
        t_hangup = time.monotonic()
        app.hang_up()
        recs = _wait_end(tmp_path, 30)
        app.wait_gone(15)
    finally:
        app.close()
    return t_hangup, recs


def _check_ui_lost(recs: list[dict[str, Any]], t_hangup: float) -> float:
    lost = [r for r in recs if r["type"] == "event" and r["message"].startswith("UI lost")]
    assert len(lost) == 1, [r.get("message") for r in recs if r["type"] == "event"]
    assert "hung up" in lost[0]["message"], lost[0]["message"]  # the cause, not just "gone"
    t_lost = float(lost[0]["t"])
    assert t_lost - t_hangup < 2.0, "the engine noticed the hangup late"
    ticks = [r for r in recs if r["type"] == "tick"]
    assert any(r["written"] for r in ticks if r["t"] < t_lost), "the arm was not being driven"
    held = [r for r in ticks if r["t"] > t_lost + HOLD_MARGIN_S]
    # Held: still reading the joints, writing nothing, until the [safety] disconnect.
    assert held and not any(r["written"] for r in held)
    assert held[-1]["t"] - t_lost > DISCONNECT_S - 0.3, "disconnected before ui_lost_disconnect_s"
    after = [r for r in recs if r["type"] == "event" and r["t"] > t_lost]
    assert any(r["message"].startswith("Disconnected") for r in after)
    assert not any(r["level"] == "error" for r in after), [r["message"] for r in after]
    assert recs[-1]["type"] == "end"
    return t_lost


def test_hangup_holds_with_no_goal_write_on_the_trace(sim_arm: Any, tmp_path: Path) -> None:
    """Our simulator as a plain port (`--port`), so its packet trace shows what reached the servos."""
    config = write_config(tmp_path, sim_arm.port, disconnect_s=DISCONNECT_S)
    sim_arm.clear_trace()
    t_hangup, recs = _run_then_hang_up(["--config", str(config)], tmp_path)
    t_lost = _check_ui_lost(recs, t_hangup)
    trace = sim_arm.trace()
    writes = [t for t, _, _ in goal_writes(trace)]
    assert any(t < t_hangup for t in writes)
    late = [t for t in writes if t > t_lost + HOLD_MARGIN_S]
    assert not late, f"Goal_Position written {1000 * (max(late) - t_lost):.0f} ms after the hold"
    reads = [r.t for r in trace if r.direction == "rx" and r.register == "Present_Position" and r.t > t_lost + 1.0]
    assert reads, "the engine stopped reading the joints: it did not hold, it died"


def test_hangup_keeps_the_simulated_arm_the_engine_started(tmp_path: Path) -> None:
    """`--sim`: the engine's own simulated arm must outlive the hangup until the engine disconnects."""
    config = write_config(tmp_path, "sim", disconnect_s=DISCONNECT_S)
    t_hangup, recs = _run_then_hang_up(["--config", str(config), "--sim"], tmp_path)
    _check_ui_lost(recs, t_hangup)


def test_hangup_of_a_headless_run(tmp_path: Path) -> None:
    """`lepetpal run --headless` in a terminal that goes away: the same UI-lost path."""
    config = write_config(tmp_path, "sim", disconnect_s=DISCONNECT_S)
    app = TmuxApp(["run", "--headless", "--task", "wave", "--config", str(config)], tmp_path)
    try:
        app.wait_for("state RUNNING", 120)
        time.sleep(1.0)
        t_hangup = time.monotonic()
        app.hang_up()
        recs = _wait_end(tmp_path, 30)
        app.wait_gone(15)
    finally:
        app.close()
    _check_ui_lost(recs, t_hangup)
