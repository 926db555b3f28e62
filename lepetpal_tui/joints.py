"""The SO-101's joints and the array type every joint vector uses: the leaf every layer may import.

Joint vectors are always in `JOINT_NAMES` order and in robot units (degrees for the five body joints, or
-100..100 when `arm.units = "normalized"`; 0..100 for the gripper).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)



def __getattr__(name: str) -> Any:
    # FloatArray needs numpy, and numpy costs ~0.1 s: the settings and the UI's first screen import this
    # leaf but need only the names, so the alias is built on first use.
    if name == "FloatArray":
        import numpy as np
        import numpy.typing as npt

        alias = globals()["FloatArray"] = npt.NDArray[np.float64]
        return alias
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def joint_vector(values: Mapping[str, float]) -> list[float]:
    """Order a joint mapping as JOINT_NAMES."""
    return [float(values[j]) for j in JOINT_NAMES]
