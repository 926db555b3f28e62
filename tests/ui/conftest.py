"""UI fixtures: the app on a scripted engine link, a fixed clock and fixed ports (no engine, no arm)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from support.scripted_link import ScriptedLink

from lepetpal_tui.settings import JOINT_NAMES, Settings
from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.wire import (
    ChunkSample,
    EngineEvent,
    EngineState,
    InferenceTiming,
    ModelStatus,
    PortInfo,
    PreflightCheck,
    ServoHealth,
    TelemetryBatch,
    TickSample,
)

T0 = 1000.0
SIZE = (120, 40)

PORTS = [
    PortInfo(
        device="/dev/ttyACM0", description="USB Single Serial", vid_pid="1a86:55d3", probed=True,
        is_so101=True, motor_ids=(1, 2, 3, 4, 5, 6), model_numbers=(777,) * 6, voltage_v=12.1,
    ),
    PortInfo(
        device="/dev/ttyUSB0", description="FT232R USB UART", vid_pid="0403:6001", probed=True,
        note="no Feetech servo answered",
    ),
]

SOURCE = "lerobot/smolvla_base"
MEASURED = (12.0, -35.5, 48.2, 20.0, -5.0, 30.0)
GOAL = (14.0, -33.0, 50.0, 22.0, -5.0, 100.0)


def fixed_clock() -> float:
    return T0


def ready_model(**overrides: Any) -> ModelStatus:
    base: dict[str, Any] = {
        "phase": "ready", "source": SOURCE, "revision": "main", "device": "cpu", "dtype": "bf16",
        "parameters": 450_046_212, "warmup_s": 0.87,
        "preflight": (
            PreflightCheck("cameras", True, "front -> observation.images.top"),
            PreflightCheck("state size", True, "6 == 6"),
            PreflightCheck("statistics", True, "state and action statistics present"),
        ),
    }
    base.update(overrides)
    return ModelStatus(**base)


def ticks(n: int, *, goal: bool, written: bool, clamp_gripper: bool = False) -> list[TickSample]:
    out = []
    for i in range(n):
        period = 0.0333 + (0.004 if i % 7 == 3 else 0.0) + 0.0002 * (i % 3)
        out.append(
            TickSample(
                t=T0 + i / 30, period_s=period, work_s=0.002, measured=MEASURED,
                goal=GOAL if goal else None, written=written,
                clamped=tuple(clamp_gripper and j == 5 for j in range(6)), starved=(i == 10 and goal),
                queue_depth=30,
            )
        )
    return out


def chunks(n: int) -> list[ChunkSample]:
    return [
        ChunkSample(T0 + i, InferenceTiming(0.04, 0.80 + 0.05 * (i % 4), 0.01), 50, 15, "pick up the cube")
        for i in range(n)
    ]


HEALTH = tuple(
    ServoHealth(j, temperature_c=(61.0 if j == "elbow_flex" else 38.0), load_pct=(75.0 if j == "gripper" else 12.0),
                voltage_v=12.1)
    for j in JOINT_NAMES
)


def _recorded() -> dict[str, Any]:
    """What the real engine said in each state (tests/support/engine_record.py)."""
    from support import engine_record

    recorded: dict[str, Any] = engine_record.record()
    return recorded


def said(name: str, at: float) -> list[EngineEvent]:
    """The engine's own events in state `name`, re-timed from `at` so the snapshot is stable."""
    return [dataclasses.replace(e, t=at + 0.5 * i) for i, e in enumerate(_recorded()[name].events)]


def _engine_batch(name: str, at: float, **fields: Any) -> TelemetryBatch:
    """A batch with the state, hold reason and events the real engine reported in `name`."""
    r = _recorded()[name]
    return TelemetryBatch(r.state, hold_reason=r.hold_reason, events=said(name, at), **fields)


def scenario(name: str) -> list[TelemetryBatch]:
    """Telemetry that puts the UI in the named state. Every event text is the engine's own (recorded)."""
    if name == "connecting":
        return [TelemetryBatch(EngineState.CONNECTING)]
    ev = said("ready", T0 + 0.5)
    if name == "downloading":
        m = ModelStatus(
            phase="downloading", source=SOURCE, revision="main", bytes_done=312_400_000,
            bytes_total=906_700_000, current_file="model.safetensors",
        )
        return [TelemetryBatch(EngineState.LOADING, model=m, events=ev[:1], health=HEALTH,
                               ticks=ticks(3, goal=False, written=False))]
    if name == "loading":
        m = ModelStatus(phase="loading", source=SOURCE, revision="main", message="building SmolVLA", device="cpu")
        return [TelemetryBatch(EngineState.LOADING, model=m, events=ev[:1], ticks=ticks(3, goal=False, written=False))]
    if name == "loading-queued":
        m = ModelStatus(phase="warming_up", source=SOURCE, revision="main", message="first inference", device="cpu")
        evs = [*ev[:1], EngineEvent(T0 + 1.0, "info",
                                'Start queued: "pick up the cube" starts when the policy is ready (F6 or F12 cancels).')]
        return [TelemetryBatch(EngineState.LOADING, model=m, events=evs, ticks=ticks(3, goal=False, written=False),
                               hold_reason='start of "pick up the cube" queued')]
    if name == "ready":
        return [TelemetryBatch(EngineState.READY, model=ready_model(), events=ev, health=HEALTH,
                               ticks=ticks(40, goal=False, written=False), tick_count=40)]
    if name in ("running", "dry-run"):
        dry = name == "dry-run"
        state = EngineState.DRY_RUN if dry else EngineState.RUNNING
        return [
            TelemetryBatch(EngineState.READY, model=ready_model(), events=ev),
            TelemetryBatch(state, task="pick up the cube", dry_run=dry, model=None, events=said("running", T0 + 2.0),
                           health=HEALTH, ticks=ticks(90, goal=True, written=not dry, clamp_gripper=True),
                           chunks=chunks(8), starved_ticks=1, clamp_count=12, tick_count=130),
        ]
    if name in ("estop", "estop_torque_off", "fault_running"):
        return [
            *scenario("running"),
            _engine_batch(name, T0 + 4.0, task="pick up the cube", ticks=ticks(5, goal=False, written=False),
                          estop_count=int(name != "fault_running"), tick_count=135, starved_ticks=1,
                          clamp_count=12, health=HEALTH),
        ]
    if name == "macro":
        return [
            TelemetryBatch(EngineState.READY, model=ready_model(), events=ev, health=HEALTH),
            _engine_batch("macro", T0 + 2.0, ticks=ticks(40, goal=True, written=True), tick_count=80, health=HEALTH),
        ]
    if name in ("policy_failed", "scripted_fallback"):
        r = _recorded()[name]
        # The real engine stays READY (the arm holds; a fixed checkpoint needs a restart, not a re-arm).
        return [_engine_batch(name, T0 + 0.5, model=r.model, health=HEALTH, ticks=ticks(20, goal=False, written=False))]
    raise ValueError(name)


AppMaker = Callable[..., tuple[LePetPalApp, ScriptedLink]]


# Textual's pilot waits after each key press until the process looks idle (`wait_for_idle`: its CPU time
# stops advancing), for at most 1 s. The answering engine's threads run in this process, so it never looks
# idle and every key cost 1 s (typing a task took 27 s). A quarter of a second is still a hundred times
# what the app takes to handle a key, and `Pilot.press` then waits for every pending event anyway.
KEY_IDLE_WAIT_S = 0.25


@pytest.fixture(autouse=True)
def _quicker_key_presses(monkeypatch: pytest.MonkeyPatch) -> None:
    import textual.app
    from textual._wait import wait_for_idle

    async def wait_for_idle_briefly(min_sleep: float = 0.0, max_sleep: float = KEY_IDLE_WAIT_S) -> None:
        await wait_for_idle(min_sleep, min(max_sleep, KEY_IDLE_WAIT_S))

    monkeypatch.setattr(textual.app, "wait_for_idle", wait_for_idle_briefly, raising=False)


@pytest.fixture
def make_app() -> Iterator[AppMaker]:
    """make_app(scenario=None, ports=PORTS, autoconnect=True, settings=None, batches=None) -> (app, link);
    `batches` replaces the named scenario's telemetry. Each link's answering engine is closed after the
    test (left running, their threads would load every later test in this process)."""
    links: list[ScriptedLink] = []

    def make(
        scenario_name: str | None = "ready",
        *,
        ports: Sequence[PortInfo] = PORTS,
        autoconnect: bool = True,
        settings: Settings | None = None,
        batches: list[TelemetryBatch] | None = None,
    ) -> tuple[LePetPalApp, ScriptedLink]:
        if batches is None:
            batches = scenario(scenario_name) if scenario_name else []
        link = ScriptedLink(batches, clock=fixed_clock)
        links.append(link)
        app = LePetPalApp(
            settings or Settings(),
            link_factory=lambda _s, _p: link,
            sim_factory=None,
            port_lister=lambda: list(ports),
            clock=fixed_clock,
            autoconnect=autoconnect,
            animations=False,
        )
        return app, link

    yield make
    for link in links:
        link.close_replies()


Settle = Callable[..., Any]


@pytest.fixture
def settle() -> Settle:
    """await settle(pilot, app, batches=N): wait until N batches and the port scan arrived, then redraw."""

    async def wait(pilot: Any, app: LePetPalApp, batches: int = 0, tries: int = 200) -> None:
        from lepetpal_tui.ui.widgets.ports import PortPane

        for _ in range(tries):
            await pilot.pause(0.01)
            if not app.operator.complete:  # the panes after the first paint are not mounted yet
                continue
            scanned = getattr(app.query_one(PortPane), "_summary", None) is not None
            if app.store.batches >= batches and scanned and (not app.autoconnect or app.link is not None):
                break
        else:
            raise AssertionError(f"UI did not settle: {app.store.batches} batches, want {batches}")
        app.redraw()
        await pilot.pause()

    return wait


class BorrowedSim:
    """The sim_arm fixture owns the simulated arm; the app must not stop it."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    @property
    def port(self) -> str:
        return str(self.sim.port)

    def stop(self) -> None:
        pass


@pytest.fixture
def borrowed_sim(sim_arm: Any) -> Callable[[], BorrowedSim]:
    """A sim_factory for LePetPalApp that lends it the test's simulated arm."""
    return lambda: BorrowedSim(sim_arm)
