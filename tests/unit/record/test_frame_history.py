"""The recorder pairs each tick with the newest frame captured at or before it (from the frame ring)."""

from __future__ import annotations

import numpy as np

from lepetpal_tui.frame_ring import FrameRing
from lepetpal_tui.record.process import FrameHistory


def test_frame_at_tick_time_is_the_newest_not_after_it() -> None:
    ring = FrameRing.create({"front": (4, 6)})
    try:
        history = FrameHistory(ring, {"front": 30})
        assert history.at("front", 1.0) is None
        for i, t in enumerate((1.00, 1.033, 1.066)):
            ring.write("front", np.full((4, 6, 3), i, dtype=np.uint8), t)
            history.poll_once()
        history.poll_once()  # nothing new: no duplicate
        pick = {t: history.at("front", t) for t in (0.5, 1.0, 1.05, 1.07, 9.0)}
        assert [int(img[0, 0, 0]) for img in pick.values() if img is not None] == [0, 0, 1, 2, 2]
    finally:
        ring.close()
        ring.unlink()
