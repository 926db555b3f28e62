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


def test_frames_left_by_a_killed_episode_do_not_reach_the_next_episodes_video(tmp_path: Path) -> None:
    """kill -9 mid-episode leaves its PNGs where the next episode (same index) stages its own."""
    import av
    import numpy as np

    root = tmp_path / "ds"
    s = _settings()
    features = dataset_features(s)

    def frames(ds: object, n: int, value: int) -> None:
        for _ in range(n):
            frame = {k: np.full(ft["shape"], value, dtype=np.uint8 if ft["dtype"] == "video" else np.float32)
                     for k, ft in features.items()}
            ds.add_frame({**frame, "task": "t"})  # type: ignore[attr-defined]

    ds = open_for_episode(root, s.recording, features, 30)
    frames(ds, 4, 10)
    ds.save_episode()
    ds.finalize()
    killed = open_for_episode(root, s.recording, features, 30)
    frames(killed, 12, 200)  # staged on disk, never saved: the process "dies" here
    del killed
    ds = open_for_episode(root, s.recording, features, 30)
    frames(ds, 4, 50)
    ds.save_episode()
    ds.finalize()
    videos = sorted((root / "videos" / "observation.images.front").rglob("*.mp4"))
    counts = []
    for path in videos:
        with av.open(str(path)) as container:
            counts.append(sum(1 for _ in container.decode(video=0)))
    assert sum(counts) == 8, f"video frames per file {counts}: the killed episode's frames were encoded"


def test_a_failed_save_on_a_nearly_full_disk_names_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LeRobot's image writers fail on a full disk without a word; the save then blames a missing PNG."""
    import shutil
    from collections import namedtuple

    from lepetpal_tui.record import process

    usage = namedtuple("usage", "total used free")
    root = tmp_path / "ds" / "not-yet"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10 - 5 * 10**6, 5 * 10**6))
    note = process.disk_note(root)
    assert f"The disk holding {root} has only 5 MB free" in note and "[recording] root" in note
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**11, 9 * 10**11))
    assert process.disk_note(root) == ""
