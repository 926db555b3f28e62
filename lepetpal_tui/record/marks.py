"""Per-episode data kept beside LeRobot's metadata: outcome marks and what the run did.

Why a file of its own: a mark comes after the episode was saved (the operator presses s / f once the arm
stopped), and LeRobot 0.6.1 has no API to add a column to an episode it already wrote. The file lives in
the dataset's `meta/` folder, so it travels with the dataset (`push_to_hub` uploads the whole folder), and
it is rewritten atomically (temporary file + rename): a kill leaves the old or the new version, never half.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MARKS_FILE = "meta/lepetpal_episodes.json"
OUTCOMES = ("success", "failure", "timed out")


def marks_path(root: Path) -> Path:
    return Path(root) / MARKS_FILE


def read_marks(root: Path) -> dict[int, dict[str, Any]]:
    """{episode_index: its record} ({} when the dataset has none yet)."""
    try:
        data = json.loads(marks_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {int(r["episode_index"]): r for r in data.get("episodes", []) if "episode_index" in r}


def write_marks(root: Path, episodes: dict[int, dict[str, Any]]) -> None:
    path = marks_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = {"episodes": [episodes[i] for i in sorted(episodes)]}
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def set_outcome(root: Path, episode: int, outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"Unknown outcome {outcome!r}: use one of {', '.join(OUTCOMES)}.")
    episodes = read_marks(root)
    episodes.setdefault(episode, {"episode_index": episode})["outcome"] = outcome
    write_marks(root, episodes)
