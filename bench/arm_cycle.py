"""Read-plus-write cycle time of LeRobot's Feetech bus against the simulated SO-101.

One cycle = sync_read Present_Position (6 servos) + sync_write Goal_Position (6 servos), normalised to
degrees as SO101Follower does. Runs with and without 1 Mbps wire-time emulation, each with LeRobot's port
as it opens it (the client spins while it waits for a reply) and as the app's adapter sets it
(`block_bus_waits`: it waits in select()), with the CPU time the waiting thread used; prints median / p99
and writes bench/results/<vendor>-<cpu kind>/arm_cycle.json.

    .venv/bin/python bench/arm_cycle.py [--cycles 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from machine import machine_line, write_result  # bench/machine.py (the script's folder is on sys.path)

from lepetpal_tui.settings import JOINT_NAMES
from lepetpal_tui.sim.process import SimArm
from lepetpal_tui.stats import percentile


def _bus(port: str) -> Any:
    from lerobot.motors import Motor, MotorCalibration, MotorNormMode
    from lerobot.motors.feetech import FeetechMotorsBus

    motors = {n: Motor(i + 1, "sts3215", MotorNormMode.DEGREES if n != "gripper" else MotorNormMode.RANGE_0_100)
              for i, n in enumerate(JOINT_NAMES)}
    calib = {n: MotorCalibration(id=m.id, drive_mode=0, homing_offset=0, range_min=0, range_max=4095)
             for n, m in motors.items()}
    return FeetechMotorsBus(port, motors, calib)


def measure(wire_time: bool, cycles: int, blocking: bool) -> dict[str, Any]:
    from lepetpal_tui.arm.adapter import block_bus_waits

    with SimArm.start(wire_time=wire_time) as sim:
        bus = _bus(sim.port)
        bus.connect()
        if blocking and not block_bus_waits(bus):
            raise SystemExit("could not give the port a read timeout")
        bus.write_calibration(bus.calibration)
        for motor in bus.motors:
            bus.write("Return_Delay_Time", motor, 0)  # as LeRobot's configure() does
        bus.enable_torque()
        reads, writes, totals = [], [], []
        failures = 0
        cpu0 = wall0 = 0.0
        for i in range(cycles + 50):
            if i == 50:
                cpu0, wall0 = time.thread_time(), time.perf_counter()
            t0 = time.perf_counter()
            try:
                pos = bus.sync_read("Present_Position")
            except ConnectionError:
                failures += 1
                continue
            t1 = time.perf_counter()
            goal = {k: v + (1.0 if i % 2 else -1.0) for k, v in pos.items() if k != "gripper"}
            bus.sync_write("Goal_Position", goal)
            t2 = time.perf_counter()
            if i >= 50:  # warm-up
                reads.append((t1 - t0) * 1e3)
                writes.append((t2 - t1) * 1e3)
                totals.append((t2 - t0) * 1e3)
        cpu_share = (time.thread_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        bus.disable_torque()
        bus.port_handler.closePort()
    return {
        "wire_time": wire_time,
        "bus_waits": "block" if blocking else "spin",
        "thread_cpu_share": cpu_share,
        "cycles": len(totals),
        "read_failures": failures,
        "cycle_ms": {"median": statistics.median(totals), "p99": percentile(totals, 99), "max": max(totals)},
        "sync_read_ms": {"median": statistics.median(reads), "p99": percentile(reads, 99)},
        "sync_write_ms": {"median": statistics.median(writes), "p99": percentile(writes, 99)},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=1000)
    args = p.parse_args()
    runs = [measure(wire, args.cycles, blocking) for wire in (False, True) for blocking in (False, True)]
    print(f"arm cycle (sync_read 6 positions + sync_write 6 goals via FeetechMotorsBus), {args.cycles} cycles")
    for r in runs:
        c, rd, wr = r["cycle_ms"], r["sync_read_ms"], r["sync_write_ms"]
        label = ("wire-time 1 Mbps" if r["wire_time"] else "no wire-time    ") + f", {r['bus_waits']:5s}"
        print(f"  {label}: cycle median {c['median']:.3f} ms, p99 {c['p99']:.3f} ms, max {c['max']:.2f} ms | "
              f"read median {rd['median']:.3f} / p99 {rd['p99']:.3f} ms | "
              f"write median {wr['median']:.3f} / p99 {wr['p99']:.3f} ms | read failures {r['read_failures']} | "
              f"thread on a CPU {r['thread_cpu_share'] * 100:.0f} % of the time")
    print(machine_line())
    out = write_result("arm_cycle", {"benchmark": "arm_cycle", "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     "runs": runs})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
