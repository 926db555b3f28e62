"""A reply that misses its timeout must not shift later reads (scservo_sdk never drops stale input)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepetpal_tui.arm.adapter import Arm
from lepetpal_tui.settings import ArmSettings, SafetySettings

pytestmark = pytest.mark.slow


def test_late_replies_do_not_shift_later_reads(sim_arm: Any, tmp_path: Path) -> None:
    arm = Arm(ArmSettings(calibration_dir=str(tmp_path / "cal"), read_retries=0), sim_arm.port, SafetySettings(),
              is_sim=True)
    arm.connect()
    try:
        pose = arm.read_joints()
        health = arm.read_health()
        # Every reply 80 ms late: past the health read's packet timeout (about 50 ms), so it fails and its
        # six replies land in the input buffer afterwards.
        sim_arm.set_fault("slow_reply", value=80.0)
        with pytest.raises(Exception, match="servo health"):
            arm.read_health()
        time.sleep(0.3)  # all the late replies are in by now
        sim_arm.clear_faults()
        # The next reads get their own replies, not the stale ones.
        assert [h.voltage_v for h in arm.read_health()] == [h.voltage_v for h in health]
        np.testing.assert_allclose(arm.read_joints(), pose, atol=0.5)
        assert [h.temperature_c for h in arm.read_health()] == [h.temperature_c for h in health]
    finally:
        arm.disconnect()
