"""`lepetpal serve`: LeRobot's policy server for a robot computer too small for SmolVLA.

Runs on the GPU machine. The robot computer keeps its engine (actuator tick, safety filter, e-stop,
session log) and asks this server only for chunks (`lepetpal --policy-server 127.0.0.1:8080` through an
SSH tunnel). Binds loopback by default: LeRobot's protocol is Python pickles (issue 3047), so whoever
reaches the port can run code on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import socket
import sys
import threading

DEFAULT_PORT = 8080
HELP = "serve SmolVLA chunks to a robot computer (LeRobot's policy server; loopback + SSH tunnel)"
PICKLE_WARNING = (
    "WARNING: LeRobot's policy server exchanges Python pickles (LeRobot issue 3047): anyone who can reach "
    "this port can run code on this machine, and a rogue server can run code on the robot computer. "
    "Prefer the default --host 127.0.0.1 with an SSH tunnel."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --port and --device are shared settings flags (the arm's port, the policy's device, default
    # SUPPRESS); for `serve` they mean this server's port and device (read in `run`), so they are not
    # declared again here (argparse shares parent actions between subcommands; redeclaring breaks them).
    parser.description = (HELP + ". Here --port is the server's port (default 8080) and --device the device "
                          'for clients that ask "auto" (default: cuda when present, else cpu).')
    g = parser.add_argument_group("policy server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback)")
    g.add_argument("--allow-network", action="store_true",
                   help="allow a non-loopback --host (read the pickle warning first)")
    g.add_argument("--fps", type=int, default=30, help="the robot's control rate (timestamps of actions)")
    g.add_argument("--obs-queue-timeout", type=float, default=2.0,
                   help="seconds GetActions waits for an observation before answering empty")
    g.add_argument("--seed", type=int, default=None,
                   help="draw every chunk's noise from this seed (reproducible chunks; parity checks)")


def server_port(args: argparse.Namespace) -> int:
    text = str(getattr(args, "port", DEFAULT_PORT))
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"--port {text} is not a TCP port (1-65535)")
    return int(text)


def tunnel_recipe(port: int) -> str:
    host = socket.gethostname()
    return (f"On the robot computer:\n  ssh -N -L {port}:127.0.0.1:{port} {host}\n"
            f"  lepetpal --policy-server 127.0.0.1:{port}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        port = server_port(args)
    except ValueError as exc:
        print(f"lepetpal serve: {exc}.", file=sys.stderr)
        return 2
    if not 0 < args.fps <= 1000:
        print(f"lepetpal serve: --fps {args.fps} is not a control rate; give the robot's, e.g. --fps 30.",
              file=sys.stderr)
        return 2
    if not args.obs_queue_timeout > 0:
        print(f"lepetpal serve: --obs-queue-timeout {args.obs_queue_timeout:g} must be a positive number of "
              "seconds (default 2).", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.allow_network:
        print(f"lepetpal serve: --host {args.host} is reachable from the network. {PICKLE_WARNING} "
              "Add --allow-network if this network is trusted, or keep the default and use an SSH tunnel.",
              file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(PICKLE_WARNING, file=sys.stderr)
    from lerobot.async_inference.configs import PolicyServerConfig

    from lepetpal_tui.policy.server import resolve_server_device, start_server

    device = str(getattr(args, "device", "auto"))
    try:
        cfg = PolicyServerConfig(host=args.host, port=port, fps=args.fps, inference_latency=0.0,
                                 obs_queue_timeout=args.obs_queue_timeout)
        server, _ = start_server(cfg, device=device, seed=args.seed)
    except OSError as exc:
        print(f"lepetpal serve: {exc}. Pick another --port, or stop what uses it.", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"lepetpal serve: {exc}.", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"Policy server (LeRobot) listening on {args.host}:{port}, device "
          f"{resolve_server_device(device)} for clients that ask auto"
          + (f", seed {args.seed}" if args.seed is not None else "") + ".", flush=True)
    print(tunnel_recipe(port), flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it like SIGTERM
        stop.wait()
    server.stop(grace=1.0).wait(2.0)
    print("Policy server stopped.")
    return 0
