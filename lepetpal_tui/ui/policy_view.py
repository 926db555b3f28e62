"""What the policy sees of a camera frame: the checkpoint's resize-with-pad, in numpy (no torch in the UI).

SmolVLA (LeRobot 0.6.1, `policies/common/vla_utils.resize_with_pad`) scales a frame to fit
`resize_imgs_with_padding` keeping its aspect ratio (bilinear, align_corners=False, sizes truncated to
int) and pads with black on the LEFT and TOP. Showing that beside the raw frame answers "what does the
policy actually see": a 4:3 frame loses a quarter of a square input to black padding, a wrong camera
mapping shows the wrong picture. `tests/unit/test_policy_view.py` checks this against LeRobot's own
function. The camera rename map only changes the feature name the frame is fed as.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where a frame is drawn, not before the UI's first screen
    import numpy as np
    import numpy.typing as npt

    Frame = npt.NDArray[np.uint8]

IMAGE_PREFIX = "observation.images."
DEFAULT_INPUT_HW = (512, 512)  # SmolVLA's resize_imgs_with_padding unless the checkpoint says otherwise


def _bilinear_axis(src: int, dst: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Source indices and weights of torch's bilinear interpolation with align_corners=False."""
    import numpy as np

    scale = src / dst
    x = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    x = np.clip(x, 0.0, None)
    i0 = np.minimum(np.floor(x).astype(np.intp), src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w = (x - i0).astype(np.float32)
    return i0, i1, w


def resize_with_pad(image: Frame, height: int, width: int) -> Frame:
    """The frame as the policy gets it: fitted into height x width, black padding on the left and top."""
    import numpy as np

    return sample_resize_with_pad(image, height, width, np.arange(height), np.arange(width))


def sample_resize_with_pad(
    image: Frame, height: int, width: int, rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp]
) -> Frame:
    """Only the pixels (rows x cols) of `resize_with_pad(image, height, width)`, computed exactly.

    The pane shows a few thousand pixels of the 512 x 512 input: sampling them costs well under a
    millisecond where the whole input costs about 55 ms in numpy on a 2-core EPYC."""
    import numpy as np

    h, w = image.shape[:2]
    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    if (h, w) == (height, width):
        return image[rows][:, cols]
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    pad_h, pad_w = height - rh, width - rw
    r_in, c_in = rows >= pad_h, cols >= pad_w
    ys, xs = rows[r_in] - pad_h, cols[c_in] - pad_w
    ay0, ay1, awy = _bilinear_axis(h, rh)
    ax0, ax1, awx = _bilinear_axis(w, rw)
    y0, y1, wy = ay0[ys], ay1[ys], awy[ys]
    x0, x1, wx = ax0[xs], ax1[xs], awx[xs]
    def at(ys: npt.NDArray[np.intp], xs: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        return image[ys][:, xs].astype(np.float32)

    top: npt.NDArray[np.float32] = at(y0, x0) * (1 - wx)[None, :, None] + at(y0, x1) * wx[None, :, None]
    bottom: npt.NDArray[np.float32] = at(y1, x0) * (1 - wx)[None, :, None] + at(y1, x1) * wx[None, :, None]
    resized = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    out = np.zeros((len(rows), len(cols), image.shape[2]), dtype=np.uint8)
    out[np.ix_(r_in, c_in)] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def policy_feature(camera: str, camera_map: Mapping[str, str]) -> str:
    """The checkpoint feature our camera `camera` is fed as ([model.camera_map] renames it)."""
    return IMAGE_PREFIX + camera_map.get(camera, camera)
