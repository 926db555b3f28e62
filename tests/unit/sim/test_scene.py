"""The scene camera: the picture follows the arm's measured joints, and only them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from lepetpal_tui.arm.camera import SceneCamera, SyntheticCamera, open_camera
from lepetpal_tui.settings import JOINT_NAMES, CameraSettings

POSE = np.array([10.0, -20.0, 30.0, 15.0, 0.0, 40.0])


_OPEN: list[SceneCamera] = []


@pytest.fixture(autouse=True)
def _close_cameras() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()  # each one has a renderer process


def _camera(pose: list[np.ndarray]) -> SceneCamera:
    cam = SceneCamera("front", 160, 120, joints=lambda: pose[0])
    _OPEN.append(cam)
    return cam


def test_same_pose_same_image_over_time() -> None:
    pose = [POSE.copy()]
    cam = _camera(pose)
    first = cam.latest().image.copy()
    pose[0] = POSE + 0.01  # below the servo's resolution: the same picture
    again = cam.latest()
    np.testing.assert_array_equal(first, again.image)
    # Another camera at the same pose draws the same bytes: a function of the joints, not of time.
    np.testing.assert_array_equal(first, _camera([POSE.copy()]).latest().image)


@pytest.mark.parametrize("joint", list(JOINT_NAMES))
def test_each_joint_moves_the_picture(joint: str) -> None:
    pose = [POSE.copy()]
    cam = _camera(pose)
    before = cam.latest().image.copy()
    moved = POSE.copy()
    i = JOINT_NAMES.index(joint)
    moved[i] += 40.0 if joint != "gripper" else 50.0
    pose[0] = moved
    after = cam.latest().image
    changed = np.any(before != after, axis=2)
    assert changed.sum() > 20, f"moving {joint} by 40 changed only {changed.sum()} pixels"
    pose[0] = POSE.copy()
    np.testing.assert_array_equal(before, cam.latest().image)  # back to the pose: the same picture


def test_source_picks_scene_or_pattern() -> None:
    joints = lambda: POSE  # noqa: E731
    scene = open_camera("front", CameraSettings(), print, joints=joints)
    assert isinstance(scene, SceneCamera)
    _OPEN.append(scene)
    assert isinstance(open_camera("front", CameraSettings(source="pattern"), print, joints=joints), SyntheticCamera)
    assert isinstance(open_camera("front", CameraSettings(), print), SyntheticCamera)  # no joints to draw
