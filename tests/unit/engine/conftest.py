"""Engine unit-test fixtures: the fakes module and an engine factory that always shuts down."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lepetpal_tui.engine.facade import Engine
from lepetpal_tui.engine.session_log import SessionLog
from lepetpal_tui.settings import Settings, replace_sections
from lepetpal_tui.wire import TelemetryBatch


def _load_fakes() -> ModuleType:
    name = "lepetpal_engine_test_fakes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fakes.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fakes() -> ModuleType:
    return _load_fakes()


def with_settings(base: Settings | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings() with some fields replaced, e.g. control={"rate_hz": 50}."""
    return replace_sections(base or Settings(), **sections)


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Any]:
    engines: list[Engine] = []

    def make(arm: Any, policy: Any, settings: Settings | None = None, log: bool = True) -> Engine:
        fk = _load_fakes()
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
