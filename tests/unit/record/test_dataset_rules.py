"""Appending to an existing dataset: refused, with what to do, when its features or fps differ; the
features themselves come from the settings through LeRobot's hw_to_dataset_features."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from lepetpal_tui.record.dataset import RecordingError, check_compatible, open_for_episode
from lepetpal_tui.record.features import dataset_features
from lepetpal_tui.settings import CameraSettings, Settings


def _settings(width: int = 128, store: str = "video") -> Settings:
    s = Settings()
    return dataclasses.replace(s, cameras={"front": CameraSettings(width=width, height=96)},
                               recording=dataclasses.replace(s.recording, store=store))  # type: ignore[arg-type]


def test_features_for_an_so101_with_one_camera() -> None:
    f = dataset_features(_settings(store="images"))
    assert f["observation.images.front"]["dtype"] == "image"
    assert tuple(f["observation.images.front"]["shape"]) == (96, 128, 3)
    assert f["action"]["names"][0] == "shoulder_pan.pos" and f["observation.state"]["shape"] == (6,)
    assert not any(k.startswith(("observation", "action")) for k in ("policy.raw_action", "safety.clamped"))


def test_other_camera_size_or_fps_is_refused_with_the_fix(tmp_path: Path) -> None:
    meta = SimpleNamespace(fps=30, features=dataset_features(_settings(width=128)))
    check_compatible(meta, dataset_features(_settings(width=128)), 30, tmp_path)
    with pytest.raises(RecordingError, match=r'observation.images.front.*existing = "new"'):
        check_compatible(meta, dataset_features(_settings(width=160)), 30, tmp_path)
    with pytest.raises(RecordingError, match="fps 30 there, 15 now"):
        check_compatible(meta, dataset_features(_settings()), 15, tmp_path)


def test_a_folder_with_other_files_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    s = _settings()
    with pytest.raises(RecordingError, match="holds no LeRobot dataset"):
        open_for_episode(tmp_path, s.recording, dataset_features(s), 30)
    assert (tmp_path / "notes.txt").read_text() == "mine"
