"""Fixtures shared across the suite. Heavy imports happen inside fixtures, never at collection time."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepetpal_tui.settings.load import CONFIG_ENV, OVERRIDES, USE_HARDWARE_ENV

# Tests never touch the network or the user's caches. Set here, at import, before any test imports
# huggingface_hub or LeRobot (they read these once), and in os.environ so that the app, engine and
# recorder processes the tests start inherit them too.
os.environ["HF_HUB_OFFLINE"] = "1"  # not setdefault: an exported HF_HUB_OFFLINE=0 must not put the suite online
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("LEPETPAL_ACCURACY_CACHE", "off")  # tests that check the cache point it at tmp_path
# The user's settings overrides (ARM_PORT=/dev/ttyACM0, POLICY_SERVER=gpu-box:8080, ...) would steer the
# tests' own settings onto a real arm or another host.
for _name in (*(o.env for o in OVERRIDES), USE_HARDWARE_ENV, CONFIG_ENV):
    os.environ.pop(_name, None)
# Caches the tests write (the Hugging Face hub and datasets caches, LeRobot's calibration files, the demo
# checkpoint) go to a folder of this session, removed at its end: the user's own are neither read (a
# stale calibration file would be used silently) nor filled.
_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="lepetpal-tests-cache-"))
os.environ["HF_HOME"] = str(_CACHE_ROOT / "huggingface")
os.environ["HF_LEROBOT_HOME"] = str(_CACHE_ROOT / "huggingface" / "lerobot")
os.environ["HF_DATASETS_CACHE"] = str(_CACHE_ROOT / "huggingface" / "datasets")
os.environ["XDG_CACHE_HOME"] = str(_CACHE_ROOT / "xdg")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


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
