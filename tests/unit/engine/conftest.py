"""Engine unit-test fixtures: the fakes module and an engine factory that always shuts down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import fakes as fakes_module

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.engine.session_log import SessionLog
from lepetpal_tui.settings import Settings, replace_sections
from lepetpal_tui.wire import TelemetryBatch


@pytest.fixture
def fakes() -> ModuleType:
    return fakes_module


def with_settings(base: Settings | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings() with some fields replaced, e.g. control={"rate_hz": 50}."""
    return replace_sections(base or Settings(), **sections)


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Any]:
    engines: list[Engine] = []

    def make(arm: Any, policy: Any, settings: Settings | None = None, log: bool = True) -> Engine:
        fk = fakes_module
        settings = settings or Settings()
        session = SessionLog(tmp_path / f"session-{len(engines)}.jsonl", settings) if log else None
        batches: list[TelemetryBatch] = []
        engine = Engine(
            settings,
            arm_factory=lambda: arm,
            policy_factory=fk.policy_factory(policy),
            on_telemetry=batches.append,
            session_log=session,
        )
        engine.batches = batches  # type: ignore[attr-defined]
        engines.append(engine)
        engine.start()
        assert engine.wait_policy(5.0), "fake policy did not load"
        return engine

    yield make
    for e in engines:
        e.close(timeout=5.0)
