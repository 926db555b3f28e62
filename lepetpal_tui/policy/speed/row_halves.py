"""Run one layer stack as two halves of its rows (tokens), each on its own thread.

Most of a transformer layer treats each token's row on its own (norms, projections, MLP); only attention
needs every token's keys and values. Two Python threads that each own half of the rows therefore meet
once per attention layer (a `threading.Barrier`) instead of once per op. Each thread runs its ops on
half of torch's threads (one each on a 2-core machine), so no op wakes OpenMP workers: with passive
waiting (the policy process) every multi-threaded op costs a wake-up of ~50-300 us on this VM, a few
hundred per chunk. Measured on the 2-core VM: the vision encoder 560 -> 440 ms with passive waiting
(465 -> 432 ms spinning), the action expert's ten steps 490 -> 335 ms with passive waiting.

torch's ops release the GIL while they compute, so the halves run in parallel; their Python between
ops (a few us an op) is what still takes turns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

# One worker thread for the second half, for the life of the process (the first half runs on the caller).
_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def halves_of(length: int) -> list[tuple[int, int]]:
    """[start, stop) of the halves of `length` rows: two when torch has two or more threads, else one."""
    if torch.get_num_threads() < 2 or length < 2:
        return [(0, length)]
    mid = (length + 1) // 2
    return [(0, mid), (mid, length)]


def run_halves[T](work: Callable[[int, threading.Barrier], T], halves: int) -> list[T]:
    """`work(i, barrier)` for each half i (0 on this thread, 1 on the worker), with half of torch's threads
    each and this thread's grad / inference mode; returns the results in half order.

    `barrier` is where the halves meet (both call `barrier.wait()` the same number of times). If one half
    fails, the barrier is broken so the other stops at its next meeting instead of waiting forever, and
    the first half's own error is raised.
    """
    global _worker
    if halves == 1:
        return [work(0, threading.Barrier(1))]
    threads = torch.get_num_threads()
    per_half = [max(1, (threads + 1) // 2), max(1, threads // 2)]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    barrier = threading.Barrier(2)

    def half(i: int) -> T:
        # OpenMP's thread count is per thread; torch sets a new thread's from its global count on first
        # use, which would undo ours: get (that first use) before set.
        torch.get_num_threads()
        torch.set_num_threads(per_half[i])
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return work(i, barrier)
        except BaseException:
            barrier.abort()
            raise

    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(1, thread_name_prefix="lepetpal-rows")
        second = _worker.submit(half, 1)
    try:
        first = half(0)
    except threading.BrokenBarrierError:
        second.result()  # the second half failed first: its error is the one to see
        raise
    finally:
        torch.set_num_threads(threads)
    return [first, second.result()]
