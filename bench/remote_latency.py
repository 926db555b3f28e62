"""Remote inference on loopback: round trip per chunk through `lepetpal serve` (LeRobot's policy server)
against local inference of the same tiny SmolVLA, and the serialisation cost of one 640x480 observation.

The tiny model makes the policy's own compute negligible, so the difference is what the protocol costs
(pickle + gRPC + the server's own pre/post-processing), on this CPU, with both ends sharing its cores.
Run: PYTHONPATH=. python bench/remote_latency.py [--chunks 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import machine_line, write_result  # bench/machine.py (the script's folder is on sys.path)

from lepetpal_tui.policy.demo_checkpoint import build_test_policy
from lepetpal_tui.policy.load import load_policy
from lepetpal_tui.policy.server_client import PolicyServerClient, connect_policy_server
from lepetpal_tui.policy.smolvla import warmup_observation
from lepetpal_tui.settings import Settings
from lepetpal_tui.stats import percentile


def _ms(values: list[float], p: float) -> float:
    return 1000 * float(percentile(values, p) or 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunks", type=int, default=20)
    args = ap.parse_args()
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="lepetpal-remote-bench-"))
    policy_dir = build_test_policy(work / "policy")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = subprocess.Popen([sys.executable, "-m", "lepetpal_tui", "serve", "--port", str(port),
                               "--device", "cpu", "--seed", "0"], cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = Settings()
        settings = dataclasses.replace(base, model=dataclasses.replace(
            base.model, server=f"127.0.0.1:{port}", path=str(policy_dir), device="cpu", dtype="fp32",
            fallback_to_scripted=False))
        obs = warmup_observation(list(settings.cameras), task="pick up the cube")
        local = load_policy(dataclasses.replace(settings.model, server=""), settings.cameras, settings.arm.units,
                            lambda st: None)
        local_s = []
        for _ in range(args.chunks):
            t = time.perf_counter()
            local.infer(obs)
            local_s.append(time.perf_counter() - t)
        for _ in range(100):  # the server takes a few seconds to import torch and lerobot
            try:
                client = connect_policy_server(settings, lambda st: None, threading.Event())
                break
            except Exception:
                time.sleep(0.5)
        remote_s, upload_s, server_s = [], [], []
        client.infer(obs)  # the server's first chunk builds its caches
        for _ in range(args.chunks):
            t = time.perf_counter()
            client.infer(obs)
            remote_s.append(time.perf_counter() - t)
            upload_s.append(client.info.network_s)
            server_s.append(client.info.server_s)
        client.close()
        encoder = PolicyServerClient(settings)
        enc_s = []
        for _ in range(50):
            t = time.perf_counter()
            data, _ = encoder.encode(obs)
            enc_s.append(time.perf_counter() - t)
        dec_s = []
        for _ in range(50):
            t = time.perf_counter()
            pickle.loads(data)  # nosec B301: our own bytes
            dec_s.append(time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(10)
    result = {
        "chunks": args.chunks,
        "local_chunk_ms_p50": _ms(local_s, 50), "local_chunk_ms_p99": _ms(local_s, 99),
        "remote_round_trip_ms_p50": _ms(remote_s, 50), "remote_round_trip_ms_p99": _ms(remote_s, 99),
        "remote_upload_ms_p50": _ms(upload_s, 50), "remote_get_actions_ms_p50": _ms(server_s, 50),
        "observation_bytes": len(data), "observation_encode_ms_p50": _ms(enc_s, 50),
        "observation_decode_ms_p50": _ms(dec_s, 50),
    }
    print(f"local chunk        p50 {result['local_chunk_ms_p50']:.1f} ms  p99 {result['local_chunk_ms_p99']:.1f} ms")
    print(f"remote round trip  p50 {result['remote_round_trip_ms_p50']:.1f} ms  p99 "
          f"{result['remote_round_trip_ms_p99']:.1f} ms  (upload {result['remote_upload_ms_p50']:.1f} ms, "
          f"GetActions {result['remote_get_actions_ms_p50']:.1f} ms)")
    print(f"observation 640x480: {len(data)} bytes, pickle {result['observation_encode_ms_p50']:.2f} ms, "
          f"unpickle {result['observation_decode_ms_p50']:.2f} ms  (median of 50)")
    print(f"wrote {write_result('remote_latency', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
