"""The recorder pairs each tick with the newest frame captured at or before it (from the frame ring)."""

from __future__ import annotations

import time

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


def test_first_frames_are_asked_for_and_awaited_before_ticks_take_one() -> None:
    """The engine draws frames only once a reader asks (frame_ring.py): the recorder asks, then waits for
    the first one, so the ticks that queued meanwhile get a picture, not a black frame."""
    import threading

    ring = FrameRing.create({"front": (4, 6)})
    stop = threading.Event()

    def engine() -> None:  # what the frame publisher does: write only while someone wants frames
        while not stop.wait(0.01):
            if ring.wanted_hz() > 0:
                ring.write("front", np.full((4, 6, 3), 7, dtype=np.uint8), time.monotonic())

    writer = threading.Thread(target=engine, daemon=True)
    writer.start()
    try:
        queued_tick_t = time.monotonic()
        time.sleep(0.1)
        assert ring.latest_seq("front") == 0  # nobody asked yet
        history = FrameHistory(ring, {"front": 30})
        assert history.wait_first(2.0)
        img = history.at("front", queued_tick_t)  # a tick from before the first frame: the earliest one
        assert img is not None and int(img[0, 0, 0]) == 7
    finally:
        stop.set()
        writer.join()
        ring.close()
        ring.unlink()


def test_wait_first_gives_up_when_no_frame_comes() -> None:
    ring = FrameRing.create({"front": (4, 6)})
    try:
        history = FrameHistory(ring, {"front": 30})
        t0 = time.monotonic()
        assert not history.wait_first(0.2)
        assert 0.2 <= time.monotonic() - t0 < 1.0
        assert history.at("front", t0) is None
    finally:
        ring.close()
        ring.unlink()
