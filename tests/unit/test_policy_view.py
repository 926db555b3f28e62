"""The UI's numpy resize-with-pad matches LeRobot's SmolVLA preprocessing (the policy's real input)."""

from __future__ import annotations

import numpy as np
import pytest

from lepetpal_tui.ui.policy_view import policy_feature, resize_with_pad, sample_resize_with_pad


@pytest.mark.parametrize(("hw", "target"), [((48, 64), (32, 32)), ((30, 20), (16, 24)), ((32, 32), (32, 32))])
def test_matches_lerobot_resize_with_pad(hw: tuple[int, int], target: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    from lerobot.policies.common.vla_utils import resize_with_pad as lerobot_resize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    ours = resize_with_pad(image, *target)
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    theirs = lerobot_resize(t, target[0], target[1], pad_value=0)[0].permute(1, 2, 0).numpy() * 255.0
    assert ours.shape == (*target, 3)
    assert np.abs(ours.astype(np.float64) - theirs).max() <= 1.0  # rounding to uint8 only
    if hw != target:
        assert ours[0].max() == 0 or ours[:, 0].max() == 0  # the black padding is on the top or the left


def test_sampling_gives_the_same_pixels() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    full = resize_with_pad(image, 40, 40)
    rows, cols = np.array([0, 5, 9, 10, 11, 39]), np.array([0, 3, 20, 39])
    np.testing.assert_array_equal(sample_resize_with_pad(image, 40, 40, rows, cols), full[rows][:, cols])


def test_feature_name_follows_the_camera_map() -> None:
    assert policy_feature("front", {"front": "top"}) == "observation.images.top"
    assert policy_feature("wrist", {"front": "top"}) == "observation.images.wrist"
