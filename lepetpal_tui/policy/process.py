"""The policy in its own process: load it there, serve inferences over a pipe of typed messages.

Why a process: inference holds the GIL for much of its Python-side work, and LeRobot's bus client
busy-polls the serial port in Python; sharing one interpreter, each tick's bus transaction waited for the
GIL again and again (tick work 7.6 ms p50 instead of ~1 ms measured on a 2-core machine). The messages
(`wire.InferRequest`, `ChunkReply`, `PolicyLoaded`, `PolicyFailed`, ...) are matched on their class.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Protocol, assert_never

from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    ActionChunk,
    ChunkReply,
    CloseRequest,
    InferRequest,
    ModelStatus,
    Observation,
    PolicyFailed,
    PolicyLoaded,
    ResetRequest,
    ToPolicy,
)

# The policy process's environment, set before torch is imported. OpenMP workers that spin while
# waiting steal the CPU the control loop and the bus need on a small machine (tiny SmolVLA next to the
# loop with a busy UI on 2 cores: chunk p50 355 ms spinning vs 36 ms passive). bench/policy_latency.py
# measures the chunk time in this setting too. Full-size SmolVLA on the 2-core Intel Xeon, alone: passive
# 1.27-1.39 s a chunk, spinning (GOMP_SPINCOUNT=100000) 0.92-0.99 s; beside one busy process: passive
# 1.86-2.14 s, spinning 16.6-18.5 s (GOMP_SPINCOUNT=10000: 3.1-3.4 s). Passive it stays.
POLICY_PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

# The policy process runs at a lower CPU priority (nice +10; LEPETPAL_POLICY_NICE overrides, 0 = off):
# on a 2-core machine inference keeps both cores busy, and the bus (the serial driver, or the simulator
# that stands for the servos) and the actuator thread must win every time they wake. Lowering our own
# priority needs no permission; CFS then gives inference the cores only when nobody else wants them.
POLICY_NICE_DEFAULT = 10


def lower_policy_priority() -> int:
    """Apply the policy process's niceness; returns the increment applied (0 when off or refused)."""
    try:
        increment = int(os.environ.get("LEPETPAL_POLICY_NICE", POLICY_NICE_DEFAULT))
    except ValueError:
        increment = POLICY_NICE_DEFAULT
    if increment <= 0:
        return 0
    try:
        os.nice(increment)
    except OSError:
        return 0
    return increment


class PolicyProcessError(RuntimeError):
    """The policy process failed to load or to infer; the message says why (and the fix when known)."""


def _policy_main(conn: Connection, settings: Settings) -> None:
    """Load the policy and serve `InferRequest`s, in its own process (its own GIL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name, value in POLICY_PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    lower_policy_priority()
    from lepetpal_tui.policy.errors import PolicyError
    from lepetpal_tui.policy.load import load_policy

    try:
        policy = load_policy(settings.model, settings.cameras, settings.arm.units, conn.send, None,
                             rate_hz=settings.control.rate_hz)
    except PolicyError as exc:
        with contextlib.suppress(OSError):
            conn.send(PolicyFailed(exc.message, exc.fix))
        return
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(PolicyFailed(str(exc)))
        return
    conn.send(PolicyLoaded(policy.chunk_length, getattr(policy, "name", "policy")))
    serve(conn, policy)


class ServedPolicy(Protocol):
    def infer(self, obs: Observation) -> ActionChunk: ...
    def reset(self) -> None: ...


def serve(conn: Connection, policy: ServedPolicy) -> None:
    """Answer the engine's requests until it closes the pipe or asks to close."""
    # Only an InferRequest is answered, with exactly one message: the engine reads the next message as the
    # reply to its inference, so anything unasked-for would pair every later chunk with the observation
    # before. A failed reset is therefore told in the replies to the inferences after it, until a reset
    # succeeds (a policy whose state could not be cleared must not drive the arm).
    reset_failure = ""
    while True:
        try:
            msg: ToPolicy = conn.recv()
        except (EOFError, OSError):
            return  # the engine is gone
        try:
            match msg:
                case InferRequest(obs=obs):
                    reply: ChunkReply | PolicyFailed
                    if reset_failure:
                        reply = PolicyFailed(reset_failure)
                    else:
                        try:
                            reply = ChunkReply(policy.infer(obs))
                        except Exception as exc:
                            reply = PolicyFailed(f"{type(exc).__name__}: {exc}")
                    conn.send(reply)
                case ResetRequest():
                    try:
                        policy.reset()
                        reset_failure = ""
                    except Exception as exc:
                        reset_failure = f"the policy's reset for a new run failed: {type(exc).__name__}: {exc}"
                case CloseRequest():
                    return
                case _:
                    assert_never(msg)
        except (EOFError, OSError):
            return


class PolicyProcess:
    """The engine's handle on the policy process; `infer` blocks in a pipe read (no GIL held)."""

    def __init__(self, process: BaseProcess, conn: Connection, chunk_length: int, name: str) -> None:
        self._process = process
        self._conn = conn
        self._lock = threading.Lock()
        self.chunk_length = chunk_length
        self.name = name

    def infer(self, obs: Observation) -> ActionChunk:
        with self._lock:
            try:
                self._conn.send(InferRequest(obs))
                reply = self._conn.recv()
            except (EOFError, OSError):
                raise PolicyProcessError("the policy process exited; restart to reload it") from None
        if isinstance(reply, ChunkReply):
            return reply.chunk
        if isinstance(reply, PolicyFailed):
            raise PolicyProcessError(reply.message)
        raise PolicyProcessError(f"the policy process answered {type(reply).__name__} to an inference")

    def reset(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._conn.send(ResetRequest())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(CloseRequest())
        self._process.join(2.0)
        if self._process.is_alive():
            self._process.terminate()
        with contextlib.suppress(Exception):
            self._conn.close()


def spawn_policy_process(settings: Settings, on_status: Callable[[ModelStatus], None],
                         cancel: threading.Event) -> PolicyProcess:
    """Load the policy in its own process, relaying its ModelStatus stream.

    Why: inference holds the GIL for much of its Python-side work, and LeRobot's bus client busy-polls
    the serial port in Python; sharing one interpreter, each tick's bus transaction waited for the GIL
    again and again (tick work 7.6 ms p50 instead of ~1 ms measured on this 2-core machine).
    """
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_policy_main, args=(child, settings), name="lepetpal-policy", daemon=True)
    proc.start()
    child.close()
    while True:
        if cancel.is_set():
            proc.terminate()
            raise PolicyProcessError("policy loading cancelled")
        try:
            if not conn.poll(0.1):
                if not proc.is_alive():
                    raise PolicyProcessError(f"the policy process exited while loading (code {proc.exitcode})")
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            raise PolicyProcessError("the policy process exited while loading") from None
        match msg:
            case ModelStatus():
                on_status(msg)
            case PolicyLoaded(chunk_length=n, name=name):
                return PolicyProcess(proc, conn, n, name)
            case PolicyFailed(message=message, fix=fix):
                proc.join(2.0)
                raise PolicyProcessError(f"{message} {fix}".strip())
            case _:
                proc.terminate()
                raise PolicyProcessError(f"the policy process sent {type(msg).__name__} while loading")
