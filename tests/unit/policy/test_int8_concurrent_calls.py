"""Two threads may call the same int8 weights at once: the row halves do, in the vision encoder and the
action expert. Every result must be the one a single thread gets."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from lepetpal_tui.policy.speed import int8_linear

# Pairs of calls, on fresh weights each, since the race was in the first calls after packing. Without
# `settle_first_call`, oneDNN gave 7-24 wrong results in 16 000 calls of this shape on the AMD EPYC
# (relative error up to 1.1; five runs of five failed). fbgemm keeps no such cache (0 in 20 000).
PAIRS = {"onednn": 8000, "fbgemm": 2000}

ENGINES = [e for e in PAIRS if e in torch.backends.quantized.supported_engines]


@pytest.mark.skipif(not ENGINES, reason="neither oneDNN nor fbgemm int8 kernels in this torch")
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
