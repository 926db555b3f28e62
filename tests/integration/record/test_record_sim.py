"""Recording on the simulated arm, end to end: `lepetpal run --headless --episodes 2 --record DIR` with the
scene camera, then the dataset reloaded with LeRobot's own `LeRobotDataset`, trained on with
`lerobot-train`, and a kill -9 in the middle of the second episode.

The runs are real processes (the headless command, its engine, the simulated arm, the recorder), as an
operator starts them. The scripted policy keeps them light on a shared 2-core machine; what is recorded
does not depend on which policy drove the arm.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO_ID = "local/lepetpal-test"
ROOT = Path(__file__).parents[3]
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def _config(tmp: Path) -> Path:
    cfg = tmp / "lepetpal.toml"
    cfg.write_text(f"""
[arm]
port = "sim"
[model]
mode = "scripted"
[cameras.front]
source = "synthetic"
width = 128
height = 96
[logging]
dir = "{tmp / 'logs'}"
[recording]
repo_id = "{REPO_ID}"
""")
    return cfg


@dataclass
class Run:
    proc: subprocess.Popen[str]
    lines: list[str]
    cond: threading.Condition

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-40:]))
                self.cond.wait(min(left, 0.2))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()


def _start(tmp: Path, dataset: Path, episodes: int, seconds: float) -> Run:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lepetpal_tui", "--config", str(_config(tmp)), "run", "--headless",
           "--task", "pick up the ball", "--episodes", str(episodes), "--episode-seconds", str(seconds),
           "--record", str(dataset)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp)
    run = Run(proc, [], threading.Condition())

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with run.cond:
                run.lines.append(line.rstrip("\n"))
                run.cond.notify_all()

    threading.Thread(target=pump, daemon=True).start()
    return run


def _running_ticks(log: Path) -> list[int]:
    """Lengths of the runs of RUNNING / DRY-RUN ticks in a session log, in order."""
    active = [json.loads(line).get("state") in ("RUNNING", "DRY-RUN")
              for line in log.read_text().splitlines() if '"type":"tick"' in line]
    return [sum(1 for _ in group) for on, group in itertools.groupby(active) if on]


def _load(root: Path) -> Any:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO_ID, root=root)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """Two episodes: the first marked success with the s key, the second timed out."""
    tmp = tmp_path_factory.mktemp("record")
    dataset = tmp / "dataset"
    run = _start(tmp, dataset, episodes=2, seconds=3.0)
    try:
        log = Path(run.wait_line(r"session log: (\S+)", 60).group(1))
        run.wait_line(r"episode 1/2 running", 120)
        time.sleep(2.0)
        run.send("s\n")
        run.wait_line(r"episode 1/2: success", 10)
        run.wait_line(r"episode 2/2: timed out", 60)
        assert run.proc.wait(240) == 0, "\n".join(run.lines[-40:])
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    yield dataset, log, "\n".join(run.lines)


def test_two_episodes_reload_with_lerobot(recorded: tuple[Path, Path, str]) -> None:
    from lepetpal_tui.record.marks import read_marks

    dataset, log, output = recorded
    ds = _load(dataset)
    assert ds.meta.total_episodes == 2
    lengths = [int(n) for n in ds.meta.episodes["length"]]
    expected = _running_ticks(log)
    assert len(expected) == 2, expected
    for got, want in zip(lengths, expected, strict=True):
        assert abs(got - want) <= 1, f"episode frames {lengths} vs running ticks in the session log {expected}"
    names = [f"{j}.pos" for j in JOINTS]
    for key in ("observation.state", "action", "policy.raw_action", "safety.clamped"):
        assert ds.features[key]["dtype"] == "float32" and tuple(ds.features[key]["shape"]) == (6,)
        assert ds.features[key]["names"] == names
    assert ds.features["observation.images.front"]["dtype"] == "video"
    assert tuple(ds.features["observation.images.front"]["shape"]) == (96, 128, 3)
    assert {"control.starved", "control.speed"} <= set(ds.features)
    frame = ds[lengths[0] + 10]  # inside the second episode
    assert frame["task"] == "pick up the ball" and int(frame["episode_index"]) == 1
    image = frame["observation.images.front"].numpy()
    assert image.shape == (3, 96, 128) and image.std() > 0.05, "the scene camera's frames were not recorded"
    # The state is what the session log measured (same ticks, in order).
    ticks = [json.loads(line) for line in log.read_text().splitlines() if '"type":"tick"' in line]
    measured = np.array([t["measured"] for t in ticks if t["state"] == "RUNNING"], dtype=np.float32)
    state = np.stack([ds[i]["observation.state"].numpy() for i in range(lengths[0])])
    n = min(len(state), len(measured)) - 1
    assert np.allclose(state[1:n], measured[1:n], atol=0.01) or np.allclose(state[:n], measured[1:n + 1], atol=0.01)
    marks = read_marks(dataset)
    assert [marks[i]["outcome"] for i in (0, 1)] == ["success", "timed out"]
    assert [marks[i]["frames"] for i in (0, 1)] == lengths
    # A headless run has no camera pane: the recorder's own demand makes the engine draw every frame.
    assert [marks[i]["frames_without_image"] for i in (0, 1)] == [0, 0]
    assert "success rate    1/2 (50 %)" in output
    commands = [json.loads(line) for line in log.read_text().splitlines() if '"type":"command"' in line]
    assert [c["outcome"] for c in commands if c["kind"] == "mark_episode"] == ["success", "timed out"]


def test_lerobot_train_runs_two_steps(recorded: tuple[Path, Path, str], tiny_policy_dir: Path, tmp_path: Path) -> None:
    dataset, _, _ = recorded
    script = Path(__file__).with_name("train_two_steps.py")
    proc = subprocess.run([sys.executable, str(script), str(dataset), REPO_ID, str(tiny_policy_dir),
                           str(tmp_path / "train")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 2: loss" in proc.stdout


def test_kill9_in_second_episode_keeps_the_first(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    run = _start(tmp_path, dataset, episodes=2, seconds=30.0)
    try:
        recorder = int(run.wait_line(r"recorder pid (\d+)", 60).group(1))
        run.wait_line(r"episode 1/2 running", 120)
        time.sleep(1.5)
        run.send("f\n")
        run.wait_line(r"episode 2/2 running", 60)
        run.wait_line(r"Recording: episode 0 saved", 120)
        time.sleep(1.5)
        os.kill(recorder, signal.SIGKILL)
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(10)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    ds = _load(dataset)
    assert ds.meta.total_episodes == 1
    first = int(ds.meta.episodes["length"][0])
    assert first > 20 and len(ds) == first
    assert ds[first - 1]["observation.state"].shape == (6,)
    time.sleep(8.0)  # the orphaned engine holds, then disconnects (safety.ui_lost_disconnect_s = 5)
    # The next start resumes the same dataset: the old episode stays, the new one is added.
    again = _start(tmp_path, dataset, episodes=1, seconds=2.0)
    try:
        again.wait_line(r"episode 1/1: timed out", 180)
        assert again.proc.wait(240) == 0, "\n".join(again.lines[-40:])
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
    output = "\n".join(again.lines[-40:])
    # Saved after the disconnect, and still reported (the engine's last batch comes after the recorder's close).
    assert "Recording: episode 1 saved" in output, output
    ds = _load(dataset)
    assert ds.meta.total_episodes == 2, output
    assert int(ds.meta.episodes["length"][0]) == first
