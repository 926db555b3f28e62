"""The Camera pane's policy view uses the checkpoint's own image input size, read from config.json."""

from __future__ import annotations

import json
from pathlib import Path

from lepetpal_tui.policy.load import _image_input_size


def test_size_is_read_as_height_width(tmp_path: Path) -> None:
    # LeRobot's SmolVLA stores (width, height): prepare_images passes [1] as the height.
    (tmp_path / "config.json").write_text(json.dumps({"resize_imgs_with_padding": [640, 480]}))
    assert _image_input_size(tmp_path) == (480, 640)


def test_missing_size_is_unknown(tmp_path: Path) -> None:
    assert _image_input_size(tmp_path) == ()
    (tmp_path / "config.json").write_text(json.dumps({"resize_imgs_with_padding": None}))
    assert _image_input_size(tmp_path) == ()


def test_tiny_checkpoint_reports_its_size(tiny_policy_dir: Path) -> None:
    cfg = json.loads((tiny_policy_dir / "config.json").read_text())
    w, h = cfg["resize_imgs_with_padding"]
    assert _image_input_size(tiny_policy_dir) == (h, w)
