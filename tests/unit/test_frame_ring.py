"""The shared-memory frame ring: round trip, seq, size checks, a reader in another process, no torn frames."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from lepetpal_tui.frame_ring import FrameRing


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    r = FrameRing.create({"front": (6, 8), "wrist": (4, 5)}, slots=3)
    yield r
    r.close()
    r.unlink()


def _frame(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value % 256, dtype=np.uint8)


def test_round_trip_and_seq(ring: FrameRing) -> None:
    assert ring.cameras == ("front", "wrist")
    assert ring.latest("front") is None and ring.latest_seq("front") == 0
    for i in range(1, 8):  # more writes than slots: the ring wraps
        img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3) + i
        assert ring.write("front", img, t=100.0 + i) == i
        got = ring.latest("front")
        assert got is not None
        assert got.seq == i and got.t == 100.0 + i and got.camera == "front"
        np.testing.assert_array_equal(got.image, img)
        got.image[:] = 0  # the copy is the reader's own
        again = ring.latest("front")
        assert again is not None and int(again.image.max()) > 0
    assert ring.latest("wrist") is None  # cameras are independent
    assert ring.latest("front", newer_than=7) is None
    assert ring.latest("front", newer_than=6) is not None


def test_wrong_size_and_unknown_camera_are_refused(ring: FrameRing) -> None:
    with pytest.raises(ValueError, match=r"declared \(6, 8, 3\) uint8"):
        ring.write("front", _frame(8, 6, 1), t=0.0)
    with pytest.raises(ValueError, match="uint8"):
        ring.write("front", np.zeros((6, 8, 3), dtype=np.float32), t=0.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="front, wrist"):
        ring.latest("top")
    assert ring.latest_seq("front") == 0  # a refused frame is not counted


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one camera"):
        FrameRing.create({})
    with pytest.raises(ValueError, match="positive"):
        FrameRing.create({"front": (0, 4)})
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        FrameRing.create({"x" * 40: (4, 4)})


def test_attach_reads_the_layout_and_unlink_removes_it() -> None:
    owner = FrameRing.create({"front": (6, 8)})
    reader = FrameRing.attach(owner.name)
    assert reader.cameras == ("front",) and reader.shape("front") == (6, 8)
    owner.write("front", _frame(6, 8, 9), t=1.0)
    got = reader.latest("front")
    assert got is not None and got.seq == 1 and int(got.image[0, 0, 0]) == 9
    with pytest.raises(RuntimeError, match="Only the process"):
        reader.unlink()
    reader.close()
    owner.close()
    owner.unlink()
    with pytest.raises(FileNotFoundError, match="has stopped"):
        FrameRing.attach(owner.name)


# Run as a separate interpreter (spawn cannot import test modules under --import-mode=importlib).
_WRITER = """
import sys, time
import numpy as np
from lepetpal_tui.frame_ring import FrameRing
ring = FrameRing.attach(sys.argv[1])  # a writer may attach too: one writer per camera is the rule
end, i = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    i += 1
    ring.write("front", np.full((120, 160, 3), i % 256, dtype=np.uint8), t=time.monotonic())
ring.close()
"""


def test_reader_in_another_process_never_sees_a_torn_frame() -> None:
    """A writer process fills each frame with one value; every frame read here must be uniform, newer
    than or equal to the last one, and the reader's exit must not unlink the owner's segment."""
    owner = FrameRing.create({"front": (120, 160)}, slots=2)  # 2 slots: the tightest ring
    try:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, owner.name, "1.0"])
        seen, last = 0, 0
        deadline = time.monotonic() + 20.0
        while proc.poll() is None and time.monotonic() < deadline:
            got = owner.latest("front", newer_than=last)
            if got is None:
                continue
            assert int(got.image.min()) == int(got.image.max()) == got.seq % 256, "torn frame"
            assert got.seq > last
            last, seen = got.seq, seen + 1
        assert proc.wait(10) == 0
        assert seen > 10, f"read only {seen} frames while another process wrote"
        FrameRing.attach(owner.name).close()  # still there after the other process exited
    finally:
        owner.close()
        owner.unlink()


def test_readers_demand_lapses_and_the_fastest_reader_sets_the_rate() -> None:
    from lepetpal_tui.frame_ring import DEMAND_HOLD_S, PREVIEW, RECORDER

    owner = FrameRing.create({"front": (6, 8)})
    reader = FrameRing.attach(owner.name)  # another mapping of the same segment, as the UI's
    try:
        assert owner.wanted_hz(now=100.0) == 0.0  # nobody has asked: the engine makes no frames
        reader.want(PREVIEW, 5.0, now=100.0)
        assert owner.wanted_hz(now=100.0) == 5.0
        assert owner.wanted_hz(now=100.0 + DEMAND_HOLD_S + 0.01) == 0.0  # a reader that stopped asking
        reader.want(PREVIEW, 5.0, now=101.0)
        owner.want(RECORDER, 30.0, now=101.2)
        assert owner.wanted_hz(now=101.5) == 30.0
        assert owner.wanted_hz(now=101.0 + DEMAND_HOLD_S + 0.1) == 30.0  # the preview lapsed, the recorder not
        with pytest.raises(ValueError, match="PREVIEW"):
            reader.want(7, 5.0)
        with pytest.raises(ValueError, match="positive rate"):
            reader.want(PREVIEW, 0.0)
        reader.close()
        reader.want(PREVIEW, 5.0)  # after close: no effect on the segment, no crash
        assert owner.wanted_hz(now=101.5) == 30.0
    finally:
        owner.close()
        owner.unlink()
