"""Helpers for the remote-inference tests: `lepetpal serve` in its own process on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.settings import Settings

ROOT = Path(__file__).parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`python -m lepetpal_tui serve` as an operator starts it on the GPU machine (here on CPU)."""

    def __init__(self, workdir: Path, port: int, seed: int | None = 0) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.out = workdir / f"serve-{port}-{time.monotonic_ns()}.out"
        args = [sys.executable, "-m", "lepetpal_tui", "serve", "--port", str(port), "--device", "cpu"]
        if seed is not None:
            args += ["--seed", str(seed)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # cwd: LeRobot's server writes logs/policy_server_<time>.log where it runs.
        self.proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=self.out.open("w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90.0
        while "listening on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lepetpal serve did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        try:
            return self.out.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start `lepetpal serve` processes (seed 0, cpu); all are stopped at the end."""
    started: list[ServeProcess] = []

    def start(port: int | None = None, seed: int | None = 0) -> ServeProcess:
        p = ServeProcess(tmp_path, port or free_port(), seed)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def remote_settings(tmp_path: Path, server: str, policy_dir: Path, **control: Any) -> Settings:
    s = Settings()
    return dataclasses.replace(
        s,
        logging=dataclasses.replace(s.logging, dir=str(tmp_path / "logs")),
        model=dataclasses.replace(s.model, server=server, path=str(policy_dir), device="cpu",
                                  fallback_to_scripted=False),
        control=dataclasses.replace(s.control, **control),
    )


def goal_writes(trace: list[Any]) -> list[float]:
    return [r.t for r in trace if r.direction == "rx" and r.register == "Goal_Position"
            and r.instruction in ("SYNC_WRITE", "WRITE")]
