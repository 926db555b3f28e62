"""The policy process's request/reply pipe: every inference gets exactly its own reply, whatever fails."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from lepetpal_tui.policy.process import PolicyProcess, PolicyProcessError, serve
from lepetpal_tui.wire import ActionChunk, Observation


class EchoPolicy:
    """A chunk that repeats the observed shoulder_pan, so a reply names the observation it answers."""

    chunk_length = 50

    def __init__(self, failing_resets: int = 0, failing_infers: int = 0) -> None:
        self.failing_resets = failing_resets
        self.failing_infers = failing_infers

    def infer(self, obs: Observation) -> ActionChunk:
        if self.failing_infers:
            self.failing_infers -= 1
            raise RuntimeError("inference blew up")
        return ActionChunk(np.full((self.chunk_length, 6), float(obs.joints[0])))

    def reset(self) -> None:
        if self.failing_resets:
            self.failing_resets -= 1
            raise RuntimeError("reset blew up")


class _NoProcess:
    """`PolicyProcess.close` joins a process; here the server is a thread that ends on CloseRequest."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def terminate(self) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[PolicyProcess, EchoPolicy]]:
    policy = EchoPolicy()
    engine_end, policy_end = mp.Pipe(duplex=True)
    thread = threading.Thread(target=serve, args=(policy_end, policy), daemon=True)
    thread.start()
    proxy = PolicyProcess(_NoProcess(thread), engine_end, policy.chunk_length, "echo")  # type: ignore[arg-type]
    yield proxy, policy
    proxy.close()
    assert not thread.is_alive()


def _obs(value: float) -> Observation:
    return Observation(joints=np.array([value, 0.0, 0.0, 0.0, 0.0, 0.0]), images={}, task="t")


def test_a_failed_reset_fails_the_inferences_after_it_and_never_shifts_replies(
        served: tuple[PolicyProcess, EchoPolicy]) -> None:
    proxy, policy = served
    policy.failing_resets = 1
    proxy.reset()
    with pytest.raises(PolicyProcessError, match="reset for a new run failed: RuntimeError: reset blew up"):
        proxy.infer(_obs(10.0))
    with pytest.raises(PolicyProcessError, match="reset for a new run failed"):
        proxy.infer(_obs(11.0))  # still not cleared: its state may be the last run's
    proxy.reset()  # the operator re-arms and starts again; this reset works
    for value in (20.0, 30.0, 40.0):
        assert proxy.infer(_obs(value)).actions[0, 0] == value


def test_a_failed_inference_answers_that_inference_only(served: tuple[PolicyProcess, EchoPolicy]) -> None:
    proxy, policy = served
    policy.failing_infers = 1
    with pytest.raises(PolicyProcessError, match="RuntimeError: inference blew up"):
        proxy.infer(_obs(1.0))
    assert proxy.infer(_obs(2.0)).actions[0, 0] == 2.0
