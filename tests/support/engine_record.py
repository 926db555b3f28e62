"""Run the real Engine through the states the UI shows and keep what it said: state, hold reason, events
and model status. The snapshot scenarios are built from this, so no screen shows text the engine does not
produce. Ticks and timings are not kept (they vary run to run); the snapshots use fixed ones.

The engine runs in-process on the unit tests' FakeArm (servos that reach their goal at once, so the
numbers in the e-stop text are the same every run) with a hold-still policy, and on the real
`load_policy` for the failed and scripted-fallback model states.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.settings import Settings
from lepetpal_tui.wire import (
    EngineEvent,
    EngineState,
    EStop,
    ModelStatus,
    Rearm,
    RunMacro,
    Start,
    TelemetryBatch,
)
from support import fakes

MISSING_MODEL = "/models/my-smolvla"  # a checkpoint folder that does not exist: load_policy's own error


@dataclass(frozen=True)
class Recorded:
    state: EngineState
    hold_reason: str
    events: tuple[EngineEvent, ...]  # since the previous recording
    model: ModelStatus | None


def _fakes() -> ModuleType:
    return fakes


class _Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[EngineEvent] = []
        self.model: ModelStatus | None = None

    def __call__(self, batch: TelemetryBatch) -> None:
        with self.lock:
            # Depends on the machine (permission to raise the thread priority), not on the state.
            self.events.extend(e for e in batch.events if "normal priority" not in e.message)
            if batch.model is not None:
                self.model = batch.model

    def take(self, engine: Engine, want: str, timeout: float = 5.0) -> Recorded:
        """Wait until an event containing `want` arrived, then everything said since the last take."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if any(want in e.message for e in self.events):
                    events, self.events = tuple(self.events), []
                    snap = engine.snapshot()
                    return Recorded(snap.state, snap.hold_reason, events, self.model)
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine never said {want!r}; it said {self.events}")
            time.sleep(0.02)


def _engine(settings: Settings, arm: Any, policy_factory: Any, sink: _Sink) -> Engine:
    engine = Engine(settings, arm_factory=lambda: arm, policy_factory=policy_factory, on_telemetry=sink)
    engine.start()
    return engine


def _load_policy_factory(settings: Settings) -> Any:
    from lepetpal_tui.policy.load import load_policy

    def make(on_status: Any, cancel: threading.Event) -> Any:
        return load_policy(settings.model, settings.cameras, settings.arm.units, on_status, cancel,
                           rate_hz=settings.control.rate_hz)

    return make


@functools.cache
def record() -> dict[str, Recorded]:
    """name -> what the engine reported there. Takes a few seconds; cached for the test session."""
    fakes = _fakes()
    out: dict[str, Recorded] = {}
    settings = Settings()
    sink = _Sink()
    arm = fakes.FakeArm()
    engine = _engine(settings, arm, fakes.policy_factory(fakes.FakePolicy()), sink)
    try:
        out["ready"] = sink.take(engine, "Policy ready")
        engine.submit(Start(task="pick up the cube"))
        out["running"] = sink.take(engine, "Running")
        engine.submit(EStop())
        out["estop"] = sink.take(engine, "E-STOP")
        engine.submit(Rearm())
        out["rearmed"] = sink.take(engine, "Re-armed")
        arm.pose[:] = [10.0, -20.0, 30.0, 15.0, 0.0, 40.0]  # away from home, so the macro has a way to go
        time.sleep(0.2)
        engine.submit(RunMacro(name="home"))
        out["macro"] = sink.take(engine, "started")
        engine.submit(EStop(torque_off=True))
        out["estop_torque_off"] = sink.take(engine, "TORQUE OFF")
        engine.submit(Rearm())
        sink.take(engine, "Re-armed")
        engine.submit(Start(task="pick up the cube"))
        sink.take(engine, "Running")
        arm.fail_reads = True
        out["fault_running"] = sink.take(engine, "bus errors in a row")
    finally:
        arm.fail_reads = False
        engine.close()
    for name, fallback in (("policy_failed", False), ("scripted_fallback", True)):
        s = dataclasses.replace(settings, model=dataclasses.replace(
            settings.model, path=MISSING_MODEL, fallback_to_scripted=fallback))
        sink = _Sink()
        engine = _engine(s, fakes.FakeArm(), _load_policy_factory(s), sink)
        try:
            out[name] = sink.take(engine, "failed to load" if not fallback else "Policy ready")
            if fallback:
                time.sleep(0.2)  # the final model status follows the event
                with sink.lock:
                    out[name] = dataclasses.replace(out[name], model=sink.model)
        finally:
            engine.close()
    return out
