"""`lepetpal ports`: list serial ports and what answers on each (the port doctor)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lepetpal_tui.wire import PortInfo

HELP = "list serial ports and probe each for an SO-101 (read-only: nothing moves)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="extra ports to probe (e.g. a simulated arm's pty)")
    parser.add_argument("--no-probe", action="store_true", help="only list ports; open none of them")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _kind(p: PortInfo) -> str:
    if p.is_so101:
        return "SO-101 (simulated)" if p.is_sim else "SO-101"
    if not p.probed:
        return "simulated arm?" if p.is_sim else "-"
    return "no SO-101"


def run(args: argparse.Namespace) -> int:
    from lepetpal_tui.arm.ports import list_ports

    ports = list_ports(probe=not args.no_probe, extra=list(args.paths))
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in ports], indent=2))
        return 0
    if not ports:
        print("No serial ports found. Plug the arm's USB cable in (and power it), then run `lepetpal ports` again.")
        return 0
    header = ("PORT", "KIND", "IDS", "VOLTS", "USB", "NOTE")
    rows = []
    for p in ports:
        usb = " ".join(x for x in (p.vid_pid, p.description, p.serial_number and f"sn {p.serial_number}") if x)
        rows.append(
            (
                p.device,
                _kind(p),
                ",".join(map(str, p.motor_ids)) or "-",
                f"{p.voltage_v:.1f}" if p.voltage_v is not None else "-",
                usb or "-",
                p.note,
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    for p in ports:
        if p.by_id:
            print(f"stable name for {p.device}: {p.by_id}")
    if any(p.is_so101 and not p.is_sim for p in ports):
        print("Set arm.port in lepetpal.toml (or --port) to the SO-101's port; its /dev/serial/by-id name survives replugging.")
    return 0
