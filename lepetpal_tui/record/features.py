"""The dataset's features, from the settings, through LeRobot's own `hw_to_dataset_features`.

What an SO-101 policy trains on: `observation.state` and `action` as float32 (6,) named `<joint>.pos`
(LeRobot's SO101Follower names), `observation.images.<camera>` as (H, W, 3). Extra per-frame features
keep what the safety filter did, under names that `dataset_to_policy_features` ignores (it only takes
keys that start with "observation" or "action"), so `lerobot-train` never mistakes them for inputs.
"""

from __future__ import annotations

from typing import Any

from lepetpal_tui.settings import JOINT_NAMES, Settings

RAW_ACTION = "policy.raw_action"  # the plan's action before the safety filter
CLAMPED = "safety.clamped"  # 1.0 per joint the filter changed this tick
STARVED = "control.starved"  # 1.0 when no planned action was available (the arm held)
SPEED = "control.speed"  # playback speed factor (< 1 while inference is slower than the plan)

MOTOR_NAMES: tuple[str, ...] = tuple(f"{j}.pos" for j in JOINT_NAMES)


def dataset_features(settings: Settings) -> dict[str, dict[str, Any]]:
    """LeRobot features for this arm and these cameras (video or images per `[recording] store`)."""
    from lerobot.utils.constants import ACTION, OBS_STR
    from lerobot.utils.feature_utils import hw_to_dataset_features

    use_video = settings.recording.store == "video"
    joints: dict[str, type | tuple[int, ...]] = {name: float for name in MOTOR_NAMES}
    cameras: dict[str, type | tuple[int, ...]] = {
        name: (cam.height, cam.width, 3) for name, cam in settings.cameras.items()
    }
    features: dict[str, dict[str, Any]] = {}
    features.update(hw_to_dataset_features(joints, ACTION, use_video))
    features.update(hw_to_dataset_features({**joints, **cameras}, OBS_STR, use_video))
    features[RAW_ACTION] = {"dtype": "float32", "shape": (len(JOINT_NAMES),), "names": list(MOTOR_NAMES)}
    features[CLAMPED] = {"dtype": "float32", "shape": (len(JOINT_NAMES),), "names": list(MOTOR_NAMES)}
    features[STARVED] = {"dtype": "float32", "shape": (1,), "names": None}
    features[SPEED] = {"dtype": "float32", "shape": (1,), "names": None}
    return features


def image_key(camera: str) -> str:
    return f"observation.images.{camera}"
