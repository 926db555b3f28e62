"""The synthetic scene renders only the box around the ball (cheap enough for the frame ring at 30 fps);
it must give exactly the pixels of the whole-frame render it replaced."""

from __future__ import annotations

import math

import numpy as np

from lepetpal_tui.arm.camera import SyntheticCamera


def whole_frame(cam: SyntheticCamera, index: int) -> np.ndarray:
    t = index / cam.fps
    h, w = cam.height, cam.width
    cx = w * (0.5 + 0.32 * math.cos(2 * math.pi * t / 6.0))
    cy = h * (0.70 + 0.12 * math.sin(2 * math.pi * t / 6.0))
    r = max(3.0, min(w, h) * 0.06)
    img = cam._background.copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    shadow = ((xx - cx - r * 0.4) ** 2 + ((yy - cy - r * 0.9) * 2.0) ** 2) < r * r
    img[shadow] = (img[shadow] * 0.6).astype(np.uint8)
    img[d2 < r * r] = (220, 40, 40)
    img[0:2, 0:32] = ((index * 37) % 256, (index * 11) % 256, 0)
    return img


def test_box_render_equals_whole_frame_render() -> None:
    for w, h in ((640, 480), (128, 96), (20, 16)):
        cam = SyntheticCamera("front", w, h)
        for i in range(0, 180, 7):
            assert np.array_equal(cam.frame_at(i), whole_frame(cam, i)), (w, h, i)
