"""`lepetpal calibrate`: record the arm's calibration (LeRobot's procedure, without LeRobot's prompts).

Torque goes off, the arm is put at the middle of its range (Enter), then every joint except the wrist
roll is moved through its whole range while positions are recorded, until Enter or --seconds. The result
is written to the motors and to LeRobot's calibration file for arm.robot_id.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

HELP = "record the arm's calibration by moving its joints by hand (writes LeRobot's calibration file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=None, metavar="S",
        help="stop recording after S seconds (default: when you press Enter); needed without a terminal",
    )
    parser.add_argument(
        "--output", default=None, metavar="FILE",
        help="calibration file to write (default: <arm.calibration_dir>/<arm.robot_id>.json)",
    )


class _Lines:
    """Enter presses from stdin, read on a thread so the recording loop never blocks on input."""

    def __init__(self) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="calibrate-stdin").start()

    def _read(self) -> None:
        while True:
            line = sys.stdin.readline()
            self._q.put(line if line else None)
            if not line:
                return

    def wait(self) -> None:
        if self._q.get() is None:
            raise EOFError

    def pressed(self) -> bool:
        try:
            self._q.get_nowait()  # a line or EOF: either ends the recording
        except queue.Empty:
            return False
        return True


def _fail(message: str, code: int = 1) -> int:
    print(f"lepetpal calibrate: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from lepetpal_tui.arm import ports as P
    from lepetpal_tui.arm.calibration import (
        CalibrationError,
        calibration_path,
        record_calibration,
        save_calibration,
    )
    from lepetpal_tui.cli import settings_from_args
    from lepetpal_tui.settings import JOINT_NAMES

    settings = settings_from_args(args)
    port = settings.arm.port
    if port == "sim":
        return _fail(
            "calibration needs an arm you can move by hand. Pass the real arm's port (--port /dev/ttyACM0 or "
            "--port auto), or rehearse on the simulated arm: start `lepetpal sim` in another terminal and pass "
            "the port it prints.",
            2,
        )
    if port == "auto":
        try:
            port = P.find_so101_port()
        except LookupError as exc:
            return _fail(str(exc))
    if args.seconds is not None and args.seconds <= 0:
        return _fail(f"--seconds must be more than 0, not {args.seconds:g}.", 2)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if args.seconds is None and not interactive:
        return _fail("stdin is not a terminal, so Enter cannot end the recording: pass --seconds S.", 2)
    is_sim = P.is_pty(port)
    out = Path(args.output).expanduser() if args.output else calibration_path(settings.arm, is_sim)

    from lepetpal_tui.arm.adapter import ArmError, close_robot, open_robot, to_motor_calibration

    lines = _Lines() if interactive else None
    tty_out = sys.stdout is not None and sys.stdout.isatty()
    with tempfile.TemporaryDirectory() as scratch:  # no file there: SO101Follower loads nothing stale
        try:
            robot, lock_fd = open_robot(
                port, settings.arm, settings.safety, is_sim=is_sim, cal_dir=Path(scratch), cal_id="new"
            )
        except ArmError as exc:
            return _fail(str(exc))
        try:
            print(f"Calibrating the arm on {port}{' (simulated)' if is_sim else ''}. Torque is now OFF: "
                  "hold the arm, it can fall.")

            def wait_for_middle() -> None:
                if lines is None:
                    print("Taking the current pose as the middle of every joint's range.")
                    return
                print("Move the arm to the middle of its range of motion, then press Enter.")
                lines.wait()

            deadline: list[float] = []
            shown = [False]

            def stop() -> bool:
                if not deadline:
                    deadline.append(time.monotonic() + (args.seconds or float("inf")))
                    how = f"for {args.seconds:g} s" if args.seconds else "until you press Enter"
                    print(f"Recording {how}: move every joint except wrist_roll through its whole range.")
                return time.monotonic() >= deadline[0] or (lines is not None and lines.pressed())

            last_draw = [0.0]

            def on_sample(sample: dict[str, tuple[int, int, int]]) -> None:
                now = time.monotonic()
                if not tty_out or now - last_draw[0] < 0.1:  # 10 redraws/s is plenty over SSH
                    return
                last_draw[0] = now
                if shown[0]:
                    print(f"\x1b[{len(sample) + 1}A", end="")
                shown[0] = True
                print(f"{'JOINT':<15}{'MIN':>7}{'POS':>7}{'MAX':>7}")
                for joint, (lo, pos, hi) in sample.items():
                    print(f"{joint:<15}{lo:>7}{pos:>7}{hi:>7}")

            calibration = record_calibration(
                robot.bus, wait_for_middle=wait_for_middle, stop=stop, on_sample=on_sample
            )
            robot.bus.write_calibration(to_motor_calibration(calibration))
            save_calibration(out, calibration)
        except CalibrationError as exc:
            return _fail(str(exc))
        except EOFError:
            return _fail("stdin closed before Enter was pressed; nothing was saved.")
        except (ConnectionError, RuntimeError, OSError) as exc:
            return _fail(
                f"the arm stopped answering during calibration ({exc}). Nothing was saved. Check its power "
                "supply and cable, then run `lepetpal calibrate` again."
            )
        finally:
            close_robot(robot, lock_fd, torque_off=True)
    print(f"{'JOINT':<15}{'ID':>3}{'HOMING':>8}{'MIN':>7}{'MAX':>7}")
    for joint in JOINT_NAMES:
        c = calibration[joint]
        print(f"{joint:<15}{c.id:>3}{c.homing_offset:>8}{c.range_min:>7}{c.range_max:>7}")
    print(f"Calibration saved to {out} and written to the motors.")
    return 0
