"""The app on a second, independent STS3215 pty simulator (tests/support/other_sts3215_sim.py), which
keeps its slave open like many pty simulators: headless and in the TUI. A real rival program on the same
port is still refused with the clear message."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepetpal_tui.arm.ports import port_holders

from .app_session import LEPETPAL, TmuxApp, session_logs, write_config  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow
OTHER_SIM = Path(__file__).parents[1] / "support" / "other_sts3215_sim.py"


@pytest.fixture
def other_sim(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    link = tmp_path / "other-sim"
    proc = subprocess.Popen([sys.executable, str(OTHER_SIM), "--link", str(link)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("READY"), line
        yield str(link), proc
    finally:
        if proc.stdin:
            proc.stdin.close()  # asks it to stop
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _written_ticks(tmp_path: Path) -> int:
    recs = [json.loads(x) for log in session_logs(tmp_path) for x in log.read_text().splitlines() if x.strip()]
    return sum(1 for r in recs if r["type"] == "tick" and r["written"])


def test_the_simulator_holds_its_own_slave_and_is_not_a_rival(other_sim: tuple[str, subprocess.Popen[str]]) -> None:
    link, proc = other_sim
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    held = any(fd.resolve() == Path(link).resolve() for fd in fd_dir.iterdir())
    assert held, "the test simulator should keep its slave open (that is the point of this test)"
    assert port_holders(link) == []


def test_headless_run_on_another_simulator(other_sim: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    link, _ = other_sim
    config = write_config(tmp_path, link)
    res = subprocess.run([LEPETPAL, "run", "--headless", "--task", "wave", "--duration", "2", "--config", str(config)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "in use by" not in res.stdout + res.stderr
    assert _written_ticks(tmp_path) > 30, res.stdout


def test_tui_on_another_simulator(other_sim: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    link, _ = other_sim
    config = write_config(tmp_path, link)
    app = TmuxApp(["--config", str(config)], tmp_path)
    try:
        app.wait_for("READY", 120)
        app.type("wave hello")
        app.keys("Enter")
        app.wait_for("RUNNING", 30)
        time.sleep(1.0)
        app.keys("F6")
        app.wait_for("READY", 10)
        app.keys("C-q")
        deadline = time.monotonic() + 30
        while app.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not app.alive(), app.screen()
        app.wait_gone(15)
    finally:
        app.close()
    assert _written_ticks(tmp_path) > 15


def test_a_rival_program_on_the_port_is_still_refused(other_sim: tuple[str, subprocess.Popen[str]],
                                                       tmp_path: Path) -> None:
    link, _ = other_sim
    rival = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY); "
         "print('open', flush=True); time.sleep(120)", link],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert rival.stdout is not None and rival.stdout.readline().strip() == "open"
        config = write_config(tmp_path, link)
        res = subprocess.run([LEPETPAL, "run", "--headless", "--task", "wave", "--duration", "2", "--config",
                              str(config)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    finally:
        rival.kill()
        rival.wait()
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"in use by PID {rival.pid}" in out and "Close the other program" in out, out
    assert _written_ticks(tmp_path) == 0
