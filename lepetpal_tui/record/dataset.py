"""Opening the dataset for the next episode: create, resume or a new folder, and one finalize per episode.

Why finalize after every episode: LeRobot keeps the episode's parquet file open across episodes and
writes its footer only in `finalize()` (without it the file is unreadable), and buffers episode
metadata. Finalizing each episode and resuming for the next (`LeRobotDataset.resume` starts a new data
file) means a kill -9 mid-episode loses only that episode. Costs about a second per episode, after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lepetpal_tui.settings import RecordingSettings


class RecordingError(Exception):
    """The dataset cannot be opened; the message says what to do."""


def unwritable(root: Path) -> str:
    """Why no dataset can be written at `root` ("" when one can): checked when recording is switched on,
    not at the first frame, where the run would already be under way unrecorded."""
    import tempfile

    where = root if root.is_dir() else root.parent
    for folder in (root, *root.parents):
        if folder.exists() and not folder.is_dir():
            return (f"cannot record into {root}: {folder} is a file, not a folder. Set [recording] root (or "
                    "--record / --rec-root / RECORD_ROOT) to a folder path.")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        return (f"cannot record into {root}: {where} cannot be written ({exc.strerror or exc}). Set [recording] "
                "root (or --record / --rec-root / RECORD_ROOT) to a folder you can write to.")
    return ""


def is_dataset(root: Path) -> bool:
    return (root / "meta" / "info.json").is_file()


def choose_root(settings: RecordingSettings) -> Path:
    """Where this session records: `root`, or with existing = "new" the first free root-2, root-3, ..."""
    root = Path(settings.root).expanduser().resolve()
    if settings.existing == "resume" or not _occupied(root):
        return root
    n = 2
    while _occupied(root.with_name(f"{root.name}-{n}")):
        n += 1
    return root.with_name(f"{root.name}-{n}")


def _occupied(root: Path) -> bool:
    return root.exists() and any(root.iterdir())


def _encoder(settings: RecordingSettings) -> Any:
    from lerobot.configs.video import RGBEncoderConfig

    return RGBEncoderConfig(vcodec=settings.codec)


def open_for_episode(root: Path, settings: RecordingSettings, features: dict[str, dict[str, Any]],
                     fps: int, robot_type: str = "so101_follower") -> Any:
    """A LeRobotDataset in write mode at `root`: created when there is none, else resumed."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    common: dict[str, Any] = {"rgb_encoder": _encoder(settings), "encoder_threads": 1}
    if is_dataset(root):
        ds = LeRobotDataset.resume(settings.repo_id, root=root, **common)
        check_compatible(ds.meta, features, fps, root)
        # A run killed mid-episode leaves that episode's PNG frames behind, at the index the next episode
        # takes. LeRobot encodes every frame-*.png of the folder, so the new episode's video would carry
        # the old episode's extra frames after its own (measured: 30 frames of video for 10 of data).
        ds.writer.cleanup_interrupted_episode(int(ds.meta.total_episodes))
        return ds
    if _occupied(root):
        raise RecordingError(
            f"{root} is not empty and holds no LeRobot dataset (no meta/info.json). Point [recording] root "
            "(or --record) at an empty or new folder, or set [recording] existing = \"new\"."
        )
    if root.exists():
        root.rmdir()  # LeRobot creates the folder itself and refuses an existing one
    return LeRobotDataset.create(
        settings.repo_id, fps, features, root=root, robot_type=robot_type,
        use_videos=settings.store == "video", metadata_buffer_size=1, **common,
    )


def check_compatible(meta: Any, features: dict[str, dict[str, Any]], fps: int, root: Path) -> None:
    """Refuse to append episodes of another shape (cameras, image size, fps) to an existing dataset."""
    problems: list[str] = []
    if int(meta.fps) != int(fps):
        problems.append(f"fps {meta.fps} there, {fps} now")
    for key, ft in features.items():
        old = meta.features.get(key)
        if old is None:
            problems.append(f"{key} missing there")
        elif tuple(old["shape"]) != tuple(ft["shape"]) or old["dtype"] != ft["dtype"]:
            problems.append(f"{key} is {old['dtype']} {tuple(old['shape'])} there, {ft['dtype']} {tuple(ft['shape'])} now")
    if problems:
        raise RecordingError(
            f"The dataset in {root} was recorded with other features ({'; '.join(problems)}). Set [recording] "
            "existing = \"new\" to start a new dataset beside it, or another root."
        )
