"""The simulated arm's scene camera: the SO-101 drawn from its joint angles, on a table, beside a ball.

Why: with `--sim` the camera pane, the policy's input and anything recorded should respond to the arm's
motion, so a wrong joint sign or a frozen camera shows up without hardware. This is a picture, not a
physics model: a pinhole projection of the SO-101's links as thick segments (painter's order), a
checkered table and a red ball, in plain numpy. The image is a pure function of the joints (rounded to
0.05 degree): the same pose gives the same bytes, a moved joint gives a different image.

Joint conventions (LeRobot's degrees, 0 at the middle of the calibrated range): shoulder_pan turns the arm
about the vertical axis; shoulder_lift tilts the upper arm from vertical (positive leans towards the
camera); elbow_flex and wrist_flex bend the next link relative to the previous one; wrist_roll turns the
jaws about the last link; gripper 0 (closed) to 100 (open). With `arm.units = "normalized"` (-100..100)
the values are drawn as if degrees: close enough to see motion and direction.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]
Vec = npt.NDArray[np.float64]

# SO-101 link lengths in metres (from the STL assembly, rounded): base to shoulder, upper arm, forearm,
# wrist to the jaw tips.
BASE_H, UPPER, FORE, HAND = 0.11, 0.116, 0.135, 0.10
BALL_AT = np.array([0.20, -0.12, 0.025])  # on the table, to the arm's right, in reach
BALL_R = 0.025

_WALL = (170, 190, 215)
_LINK_COLORS = ((235, 235, 235), (250, 200, 40), (250, 170, 30), (240, 140, 20))
_JAW = (60, 60, 60)
_BALL = (220, 40, 40)


def pose(joints: Vec | None) -> Vec:
    """The six values the scene draws: None is the rest pose, NaN counts as 0."""
    return np.zeros(6) if joints is None else np.nan_to_num(np.asarray(joints, dtype=np.float64)[:6])


def pose_key(q: Vec) -> tuple[int, ...]:
    """Poses with the same key draw the same picture (0.05 degree: finer than the servo's 0.088 degree step)."""
    return tuple(round(float(v) * 20) for v in q)


class SceneRenderer:
    """Renders the arm at a pose into a width x height RGB image; cheap enough for 30 frames/s (a few ms)."""

    def __init__(self, width: int = 640, height: int = 480) -> None:
        self.width, self.height = int(width), int(height)
        # The camera: in front of the arm, above the table, looking at the workspace.
        eye = np.array([0.55, 0.18, 0.38])
        target = np.array([0.08, 0.0, 0.12])
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        self._eye, self._basis = eye, np.stack([right, up, fwd])
        self._f = 0.95 * self.width  # focal length in pixels (about 55 degrees across)
        self._background = self._render_background()
        self._key: tuple[int, ...] | None = None
        self._last: Frame | None = None

    # -------------------------------------------------------------------------------- geometry

    def project(self, p: Vec) -> tuple[float, float, float]:
        """World point -> (u, v, depth) in pixels; depth is metres along the view axis."""
        c = self._basis @ (np.asarray(p, dtype=np.float64) - self._eye)
        z = max(float(c[2]), 1e-3)
        return self.width / 2 + self._f * float(c[0]) / z, self.height / 2 - self._f * float(c[1]) / z, z

    @staticmethod
    def joint_points(joints: Vec) -> list[Vec]:
        """Base, shoulder, elbow, wrist and jaw tip positions for the six joint values (degrees)."""
        pan, lift, elbow, wrist = (math.radians(float(v)) for v in joints[:4])
        heading = np.array([math.cos(pan), math.sin(pan), 0.0])  # the arm's plane
        vertical = np.array([0.0, 0.0, 1.0])

        def along(angle_from_vertical: float, length: float) -> Vec:
            return length * (math.sin(angle_from_vertical) * heading + math.cos(angle_from_vertical) * vertical)

        base = np.zeros(3)
        shoulder = base + BASE_H * vertical
        a1 = lift
        elbow_p = shoulder + along(a1, UPPER)
        a2 = a1 + math.pi / 2 + elbow  # elbow 0: the forearm is level when the upper arm is vertical
        wrist_p = elbow_p + along(a2, FORE)
        a3 = a2 + wrist
        tip = wrist_p + along(a3, HAND)
        return [base, shoulder, elbow_p, wrist_p, tip]

    # -------------------------------------------------------------------------------- drawing

    def _render_background(self) -> Frame:
        h, w = self.height, self.width
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = _WALL
        # Table: the plane z = 0, checkered in 5 cm tiles, projected per pixel once (a ray per pixel).
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        rays = (
            ((xx - w / 2) / self._f)[..., None] * self._basis[0]
            + (-(yy - h / 2) / self._f)[..., None] * self._basis[1]
            + self._basis[2]
        )
        dz = rays[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = -self._eye[2] / dz
        hit = (dz < 0) & np.isfinite(s)
        px = self._eye[0] + s * rays[..., 0]
        py = self._eye[1] + s * rays[..., 1]
        on_table = hit & (px > -0.25) & (px < 0.45) & (np.abs(py) < 0.40)
        checks = ((np.floor(px / 0.05) + np.floor(py / 0.05)) % 2 == 0) & on_table
        img[on_table] = (190, 150, 110)
        img[checks] = (165, 125, 90)
        # The ball's shadow and the ball (static: the simulated arm does not push it).
        bu, bv, bz = self.project(BALL_AT)
        su, sv, _ = self.project(BALL_AT - np.array([0.0, 0.0, BALL_R * 0.9]))
        r = self._f * BALL_R / bz
        shadow = ((xx - su - r * 0.3) ** 2 + ((yy - sv) * 2.2) ** 2) < r * r
        img[shadow] = (img[shadow] * 0.6).astype(np.uint8)
        ball = (xx - bu) ** 2 + (yy - bv) ** 2 < r * r
        shade = np.clip(1.15 - 0.5 * np.hypot(xx - bu + r * 0.3, yy - bv + r * 0.3) / max(r, 1.0), 0.5, 1.2)
        img[ball] = np.clip(np.array(_BALL)[None, :] * shade[ball][:, None], 0, 255).astype(np.uint8)
        return img

    def _segment(self, img: Frame, a: tuple[float, float, float], b: tuple[float, float, float],
                 radius_m: float, color: tuple[int, int, int]) -> None:
        """A thick segment from a to b (projected points), radius in metres scaled by its depth."""
        r = max(1.5, self._f * radius_m / ((a[2] + b[2]) / 2))
        x0, x1 = int(max(0, min(a[0], b[0]) - r - 1)), int(min(self.width, max(a[0], b[0]) + r + 2))
        y0, y1 = int(max(0, min(a[1], b[1]) - r - 1)), int(min(self.height, max(a[1], b[1]) + r + 2))
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = b[0] - a[0], b[1] - a[1]
        length2 = dx * dx + dy * dy
        t = np.clip(((xx - a[0]) * dx + (yy - a[1]) * dy) / length2, 0.0, 1.0) if length2 > 1e-9 else 0.0
        d2 = (xx - a[0] - t * dx) ** 2 + (yy - a[1] - t * dy) ** 2
        inside = d2 <= r * r
        # A little shading across the link so it reads as a solid: darker at its edges.
        shade = 1.0 - 0.35 * np.sqrt(d2[inside]) / r
        img[y0:y1, x0:x1][inside] = (np.array(color)[None, :] * shade[:, None]).astype(np.uint8)

    def render(self, joints: Vec | None) -> Frame:
        """The scene with the arm at `joints` (six values, JOINT_NAMES order); None draws the rest pose."""
        q = pose(joints)
        key = pose_key(q)
        if key == self._key and self._last is not None:
            return self._last
        img = self._background.copy()
        pts = self.joint_points(q)
        proj = [self.project(p) for p in pts]
        # Links far to near, so the nearer one is drawn over the farther one.
        links = [(0, 1, 0.028), (1, 2, 0.022), (2, 3, 0.019), (3, 4, 0.014)]
        order = sorted(range(len(links)), key=lambda i: -(proj[links[i][0]][2] + proj[links[i][1]][2]))
        for i in order:
            a, b, radius = links[i]
            self._segment(img, proj[a], proj[b], radius, _LINK_COLORS[i])
        self._jaws(img, pts[3], pts[4], q[4], q[5])
        self._key, self._last = key, img
        return img

    def _jaws(self, img: Frame, wrist: Vec, tip: Vec, roll_deg: float, gripper: float) -> None:
        """Two jaw fingers at the tip, opened by the gripper value and turned by wrist_roll."""
        axis = tip - wrist
        n = float(np.linalg.norm(axis))
        if n < 1e-6:
            return
        axis /= n
        side = np.cross(axis, np.array([0.0, 0.0, 1.0]))
        if np.linalg.norm(side) < 1e-6:
            side = np.array([0.0, 1.0, 0.0])
        side /= np.linalg.norm(side)
        other = np.cross(axis, side)
        roll = math.radians(float(roll_deg))
        spread = (math.cos(roll) * side + math.sin(roll) * other) * (0.008 + 0.03 * min(max(gripper, 0.0), 100.0) / 100)
        for sign in (-1.0, 1.0):
            base = tip - 0.02 * axis + sign * spread
            self._segment(img, self.project(base), self.project(base + 0.045 * axis), 0.006, _JAW)
