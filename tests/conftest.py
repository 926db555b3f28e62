"""Fixtures shared across the suite. Heavy imports happen inside fixtures, never at collection time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests never touch the network or the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LEPETPAL_ACCURACY_CACHE", "off")  # tests that check the cache point it at tmp_path


@pytest.fixture
def sim_arm(tmp_path: Path) -> Iterator[Any]:
    """A simulated SO-101 (six STS3215 servos) on a pty, in its own process, with packet tracing on."""
    from lepetpal_tui.sim.process import SimArm

    with SimArm.start(link_path=str(tmp_path / "so101-sim"), trace=True) as sim:
        yield sim


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SmolVLA checkpoint in the real format, built offline once per test session."""
    from lepetpal_tui.policy.demo_checkpoint import build_test_policy

    return build_test_policy(tmp_path_factory.mktemp("tiny-smolvla") / "policy")
