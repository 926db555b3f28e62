"""The SO-101's joints and the array type every joint vector uses: the leaf every layer may import.

Joint vectors are always in `JOINT_NAMES` order and in robot units (degrees for the five body joints, or
-100..100 when `arm.units = "normalized"`; 0..100 for the gripper).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)

FloatArray = npt.NDArray[np.float64]


def joint_vector(values: Mapping[str, float]) -> list[float]:
    """Order a joint mapping as JOINT_NAMES."""
    return [float(values[j]) for j in JOINT_NAMES]
