"""`lepetpal sim`: run the simulated SO-101 on a pty until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

HELP = "run the simulated SO-101 arm (six STS3215 servos on a pseudo-terminal) until Ctrl-C"
DEFAULT_LINK = "/tmp/lepetpal-so101-sim"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", default=DEFAULT_LINK, metavar="PATH",
                        help=f"stable symlink to the pty, to use as the arm port (default {DEFAULT_LINK})")
    parser.add_argument("--trace", action="store_true", help="print every packet on the bus")
    parser.add_argument("--wire-time", action="store_true",
                        help="answer as late as a real 1 Mbps bus would (default: as fast as possible)")


def _format(rec: object) -> str:
    from lepetpal_tui.sim.bus import TraceRecord

    assert isinstance(rec, TraceRecord)
    where = f" {rec.register or ''}@{rec.address}" if rec.address is not None else ""
    err = f" err=0x{rec.error:02x}" if rec.error else ""
    return f"{rec.t:14.6f} {rec.direction} {rec.instruction:<10} id={rec.motor_id:<3}{where} {list(rec.values)}{err}"


def run(args: argparse.Namespace) -> int:
    from lepetpal_tui.sim.process import SimArm, SimError

    try:
        sim = SimArm.start(link_path=args.link, trace=args.trace, wire_time=args.wire_time)
    except SimError as exc:
        print(f"lepetpal sim: {exc}", file=sys.stderr)
        return 1
    # Ctrl-C and SIGTERM only set a flag. A KeyboardInterrupt could land at any bytecode, also inside a
    # control call to the sim process: a reply half read, or the call's lock taken and never released
    # (`with lock:` is not atomic against signals), and the shutdown then waited for ever. Seen once in
    # the full suite: the process still running 20 s after its Ctrl-C.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    with sim:
        print(f"Simulated SO-101 ready on {sim.port} (pty {sim.pty_path}); servo IDs 1-6, 1 Mbps.")
        print(f"Use it as the arm port: lepetpal --port {sim.port}   (Ctrl-C to stop)", flush=True)
        while sim.is_alive and not stop.wait(0.2):
            if args.trace:
                for rec in sim.drain_trace():
                    print(_format(rec))
                sys.stdout.flush()
    print("Simulated arm stopped.")
    return 0
