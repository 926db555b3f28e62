"""The real `lepetpal` app in a real terminal (tmux), driven as an operator would, and its leftovers.

Every process started for one session carries a marker in its environment (children inherit it), so a
test can tell whether anything of that session is still running after a hangup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lepetpal_tui.arm.calibration import default_sim_calibration, save_calibration

LEPETPAL = str(Path(sys.executable).with_name("lepetpal"))
MARK = "LEPETPAL_TEST_SESSION"
ROBOT_ID = "test_arm"


def need_tmux() -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")


def write_config(tmp_path: Path, port: str, *, disconnect_s: float = 1.5) -> Path:
    """A lepetpal.toml for the scripted motion on `port`, with a calibration that fits a simulator."""
    cal_dir = tmp_path / "calibration"
    save_calibration(cal_dir / f"{ROBOT_ID}.json", default_sim_calibration())
    path = tmp_path / "lepetpal.toml"
    path.write_text(
        f'[arm]\nport = "{port}"\nrobot_id = "{ROBOT_ID}"\ncalibration_dir = "{cal_dir}"\n'
        '[model]\nmode = "scripted"\n'
        f'[logging]\ndir = "{tmp_path / "logs"}"\n'
        f"[safety]\nui_lost_disconnect_s = {disconnect_s}\n"
    )
    return path


def marked_pids(mark: str) -> list[int]:
    """PIDs whose environment carries `MARK=mark`."""
    needle = f"{MARK}={mark}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def session_logs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "logs").glob("session-*.jsonl"))


class TmuxApp:
    """`lepetpal ARGS` as the only program of a detached tmux session (120x40)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        need_tmux()
        self.mark = uuid.uuid4().hex
        self.name = f"lepetpal-test-{self.mark[:8]}"
        # COLUMNS/LINES (set under pytest) would override the terminal's real size.
        cmd = " ".join([f"env -u COLUMNS -u LINES {MARK}={self.mark}", LEPETPAL, *args])
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", "-c", str(cwd), cmd],
                       check=True)

    def screen(self) -> str:
        res = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return res.stdout

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on screen after {timeout:.0f} s:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)

    def hang_up(self) -> None:
        """What a dropped SSH connection does: the terminal goes away under the running app."""
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False, capture_output=True)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def wait_gone(self, timeout: float) -> None:
        """Until no process of this session is left; SIGKILLs and fails if any outlives `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not marked_pids(self.mark):
                return
            time.sleep(0.2)
        left = marked_pids(self.mark)
        for pid in left:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                print("left behind:", pid, fh.read().replace(b"\0", b" ").decode())
        self.close()
        raise AssertionError(f"processes left {timeout:.0f} s after the session ended: {left}")

    def close(self) -> None:
        self.hang_up()
        for pid in marked_pids(self.mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
