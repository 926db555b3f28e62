"""Two threads may call the same int8 weights at once: the row halves do, in the vision encoder and the
action expert. Every result must be the one a single thread gets, and a freshly converted policy's
chunks for the same observation and noise must agree to the bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lepetpal_tui.policy import smolvla as sv
from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME
from lepetpal_tui.policy.process import POLICY_PROCESS_ENV
from lepetpal_tui.policy.speed import apply as policy_speed
from lepetpal_tui.policy.speed import int8_linear
from lepetpal_tui.settings import ModelSettings

# Pairs of calls, on fresh weights each, since the race was in the first calls after packing. Without
# `settle_first_call`, oneDNN gave 7-24 wrong results in 16 000 calls of this shape on the AMD EPYC
# (relative error up to 1.1; five runs of five failed). fbgemm keeps no such cache (0 in 20 000). qnnpack is
# the engine chosen on ARM (torch's default there, onednn through the Arm Compute Library, is not sound).
PAIRS = {"onednn": 8000, "fbgemm": 2000, "qnnpack": 2000}

ENGINES = [e for e in PAIRS if e in torch.backends.quantized.supported_engines]

# Freshly converted tiny policies, four chunks each, in one child process.
RUNNERS = 4

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(not ENGINES, reason="no oneDNN, fbgemm or qnnpack int8 kernels in this torch")
@pytest.mark.parametrize("engine", ENGINES)
def test_two_threads_calling_fresh_int8_weights_at_once_get_the_single_thread_results(engine: str) -> None:
    pairs = PAIRS[engine]
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    # Different activations per thread, so different per-call scales and zero points.
    xs = [torch.randn(2, 64), torch.randn(2, 64) * 3 + 1]
    reference, *fresh = int8_linear.pack_all([([lin], engine)] * (pairs + 1))
    with torch.inference_mode():
        want = [torch.ops.quantized.linear_dynamic(x, reference) for x in xs]
    wrong: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def calls(i: int) -> None:
        torch.set_num_threads(1)  # as each row half runs
        with torch.inference_mode():
            for n, packed in enumerate(fresh):
                barrier.wait()  # both threads call these weights at the same moment
                if not torch.equal(torch.ops.quantized.linear_dynamic(xs[i], packed), want[i]):
                    wrong[i].append(n)

    threads = [threading.Thread(target=calls, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [[], []], f"{engine}: {len(wrong[0]) + len(wrong[1])} wrong results of {2 * pairs}"


def repeat_chunks(policy_dir: str, all_onednn: bool, runners: int) -> None:
    """In a child process started with the policy process's environment (OpenMP waits passively, so the
    row halves run as in the app): fresh int8 runners of `policy_dir`, four chunks each with the same
    observation and noise. Prints each runner's largest difference between its chunks (JSON)."""
    torch.set_num_threads(2)
    if all_onednn:
        policy_speed.int8_engine = lambda name: "onednn"  # type: ignore[assignment]
    obs = sv.warmup_observation(("front",), task="pick up the cube")
    diffs: list[float] = []
    for _ in range(runners):
        runner = sv.load_local(Path(policy_dir), model=ModelSettings(path=policy_dir), device="cpu",
                               backbone=str(Path(policy_dir) / BACKBONE_DIRNAME))
        runner.to_int8()
        assert runner.policy.model.denoise_step.halves  # type: ignore[union-attr]
        noise = runner.make_noise(7)
        first, *later = (runner.raw_chunk(obs, noise=noise)[0] for _ in range(4))
        diffs.append(max(float(np.max(np.abs(chunk - first))) for chunk in later))
    print(json.dumps(diffs))


@pytest.mark.skipif(not ENGINES, reason="no oneDNN, fbgemm or qnnpack int8 kernels in this torch")
@pytest.mark.parametrize("all_onednn", [False, True] if "onednn" in ENGINES else [False])
def test_the_same_observation_and_noise_give_the_same_chunk_to_the_bit(tiny_policy_dir: Path, all_onednn: bool) -> None:
    """The policy process's setting: row halves on two threads, freshly converted, four chunks each.
    `all_onednn`: oneDNN packs every layer, the expert's too, as on CPUs with AMX or AVX-VNNI. Before
    `settle_first_call` that layout gave differing chunks in 180 of 200 runners on the AMD EPYC (up to
    0.08 apart), and the default layout differed in the first chunk in ~1 of 40."""
    code = (f"import sys; sys.path.insert(0, 'tests/unit/policy'); import test_int8_concurrent_calls as t; "
            f"t.repeat_chunks({str(tiny_policy_dir)!r}, {all_onednn}, {RUNNERS})")
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **POLICY_PROCESS_ENV},
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    diffs = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(diffs) == RUNNERS and diffs == [0.0] * RUNNERS, diffs
