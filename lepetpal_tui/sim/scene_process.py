"""The scene camera's renderer in a process of its own, so its numpy work never holds the engine's GIL.

Why: `SceneRenderer.render` costs a few ms of numpy per new pose (boolean-mask writes hold the GIL). In
the engine process it ran on the frame ring's thread and the inference thread, beside the actuator
tick: with the scene camera the tick's late p99 was ~0.6 ms worse than with the pattern camera (2-core
AMD EPYC, AVX-512), and recording on top added ~1.5 ms more. Here the engine sends a pose (56 bytes
over a socketpair), waits for the answer with the GIL released, and copies the frame out of a
shared-memory `FrameRing` (one memcpy). The renderer process runs at nice 10, below the tick.

The picture is the same pure function of the pose as in-process rendering (same bytes: a test checks).
The process exits when its socket closes, so it dies with the engine even after a SIGKILL.

    renderer = SceneRendererProcess(640, 480)
    image = renderer.render(joints)   # raises SceneProcessError when the process is gone or hangs
    renderer.close()
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np

from lepetpal_tui.frame_ring import FrameRing
from lepetpal_tui.sim.scene import Frame, SceneRenderer, Vec

START_TIMEOUT_S = 10.0  # python + numpy import + the table's background: ~0.3 s on a 2-core EPYC
REPLY_TIMEOUT_S = 2.0  # one render is a few ms; far beyond that the process is stuck
RENDER_NICE = 10  # below the tick (-10) and inference (0), like the frame ring's thread

_REQUEST = struct.Struct("<Q6d")  # request number, six joint values
_REPLY = struct.Struct("<Q")  # the request number whose frame is now in the ring
_READY = b"READY\n"
_CAMERA = "scene"


class SceneProcessError(RuntimeError):
    """The renderer process did not start, stopped, or did not answer in time."""


class SceneRendererProcess:
    """`SceneRenderer.render` answered by a child process through a frame ring. One caller at a time
    (the lock serialises the frame ring's thread and the inference thread)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)
        self._ring = FrameRing.create({_CAMERA: (self.height, self.width)}, slots=2)
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "lepetpal_tui.sim.scene_process", "--fd", str(theirs.fileno()),
               "--ring", self._ring.name, "--width", str(self.width), "--height", str(self.height)]
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            self._drop_ring()
            raise SceneProcessError(f"cannot start the scene renderer ({exc})") from exc
        finally:
            theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._request = 0

    @property
    def pid(self) -> int:
        return self._proc.pid

    def render(self, joints: Vec) -> Frame:
        """The scene at `joints` (six values, already normalised: see `scene.pose`); a fresh array."""
        with self._lock:
            if self._closed:
                raise SceneProcessError("the scene renderer was closed")
            if not self._ready:
                self._wait_ready()
            self._request += 1
            q = np.asarray(joints, dtype=np.float64)[:6]
            try:
                self._sock.settimeout(REPLY_TIMEOUT_S)
                self._sock.sendall(_REQUEST.pack(self._request, *(float(v) for v in q)))
                done = _REPLY.unpack(_recv_exactly(self._sock, _REPLY.size))[0]
            except (OSError, EOFError) as exc:  # socket.timeout is an OSError
                raise SceneProcessError(f"the scene renderer stopped answering ({exc or type(exc).__name__})") from exc
            frame = self._ring.latest(_CAMERA)
            if done != self._request or frame is None:
                raise SceneProcessError(f"the scene renderer answered request {done}, not {self._request}")
            return frame.image

    def _wait_ready(self) -> None:
        try:
            self._sock.settimeout(START_TIMEOUT_S)
            line = _recv_exactly(self._sock, len(_READY))
        except (OSError, EOFError) as exc:
            raise SceneProcessError(
                f"the scene renderer did not start (exit code {self._proc.poll()}, {exc or type(exc).__name__})"
            ) from exc
        if line != _READY:
            raise SceneProcessError(f"the scene renderer said {line!r} instead of ready")
        self._ready = True

    def close(self) -> None:
        """Stop the process (it exits on the closed socket) and remove the ring. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.close()
        try:
            self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._drop_ring()

    def _drop_ring(self) -> None:
        with contextlib.suppress(Exception):
            self._ring.close()
        with contextlib.suppress(Exception):
            self._ring.unlink()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the other end closed the socket")
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------------------------------- the child


def serve(sock: socket.socket, ring: FrameRing, renderer: SceneRenderer) -> None:
    """Answer requests until the socket closes: render, write into the ring, then say which request."""
    sock.sendall(_READY)
    while True:
        try:
            msg = _recv_exactly(sock, _REQUEST.size)
        except (OSError, EOFError):
            return
        request, *q = _REQUEST.unpack(msg)
        image = renderer.render(np.array(q, dtype=np.float64))
        ring.write(_CAMERA, image, time.monotonic())
        try:
            sock.sendall(_REPLY.pack(request))
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the scene camera's renderer (started by SceneRendererProcess)")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--ring", required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when it stops (it closes the socket)
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, RENDER_NICE)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    ring = FrameRing.attach(args.ring)
    try:
        serve(sock, ring, SceneRenderer(args.width, args.height))
    finally:
        ring.close()
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
