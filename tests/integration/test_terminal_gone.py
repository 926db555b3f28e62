"""A terminal that goes away without a SIGHUP (its pty's other end closed, but it was not the app's
controlling terminal) must end the UI the way a hangup does, not leave it spinning on EOF unseen."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from lepetpal_tui.ui.app import STATS_ENV, terminal_hung_up_on

pytestmark = pytest.mark.slow


def test_a_closed_pty_reads_as_hung_up_and_a_pipe_does_not() -> None:
    master, slave = os.openpty()
    assert not terminal_hung_up_on(slave)
    os.close(master)
    assert terminal_hung_up_on(slave)
    os.close(slave)
    r, w = os.pipe()
    assert not terminal_hung_up_on(r)  # not a terminal: never "hung up"
    os.close(r)
    os.close(w)


def test_the_ui_leaves_when_its_terminal_closes_without_a_sighup(tmp_path: Path) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    stats = tmp_path / "stats.json"
    env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", **{STATS_ENV: str(stats)})
    # A session of its own and the pty only inherited: it is not the controlling terminal, so closing
    # the master sends no SIGHUP (as with a terminal program that dies, or a probe that lets go).
    proc = subprocess.Popen([sys.executable, "-m", "lepetpal_tui", "ui", "--fake-telemetry", "30"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)

    def drain() -> None:
        while True:
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(stats.read_text()).get("full_screen_unix"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        else:
            pytest.fail("the app never painted its screen")
        os.close(master)
        rc = proc.wait(timeout=10)  # before the check, it kept running (Textual's input thread on EOF)
        assert rc == 128 + signal.SIGHUP  # the hangup path: the engine was told the UI is lost
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
