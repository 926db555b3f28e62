"""The control thread's real-time priority: SCHED_FIFO while it sleeps, and through its work only when its
bus waits never spin (back to normal, nice kept, otherwise); a plain sleep where real-time is not allowed."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import pytest

from lepetpal_tui.engine.wakeup import RealtimeWakeup
from lepetpal_tui.settings import Settings

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="no sched_setscheduler here")


def test_off_in_the_settings_is_a_plain_sleep() -> None:
    w = RealtimeWakeup(enabled=False)
    assert not w.available and "realtime_wakeup = false" in w.why_not
    t = time.monotonic()
    w.sleep(0.02)
    assert time.monotonic() - t >= 0.02


@linux_only
def test_without_permission_it_says_why_and_sleeps_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        calls.append(policy)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    w = RealtimeWakeup()
    assert not w.available and "no permission" in w.why_not
    calls.clear()
    w.sleep(0.01)
    assert calls == []  # no further attempts: one refusal is enough


@linux_only
def test_real_time_only_during_the_sleep() -> None:
    seen: dict[str, int] = {}
    ready = threading.Event()

    def tick_thread() -> None:
        seen["tid"] = threading.get_native_id()
        with contextlib.suppress(OSError):  # a nice value to keep (raising it needs no right)
            os.setpriority(os.PRIO_PROCESS, seen["tid"], 5)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, seen["tid"])
        w = RealtimeWakeup()
        seen["available"] = int(w.available)
        ready.set()
        w.sleep(0.5)
        seen["after"] = os.sched_getscheduler(0)
        seen["nice_after"] = os.getpriority(os.PRIO_PROCESS, seen["tid"])

    th = threading.Thread(target=tick_thread)
    th.start()
    assert ready.wait(5)
    if not seen["available"]:
        th.join()
        pytest.skip("no permission for real-time priority on this machine (the fallback is tested above)")
    time.sleep(0.2)  # inside the sleep
    assert os.sched_getscheduler(seen["tid"]) == os.SCHED_FIFO
    th.join()
    assert seen["after"] == os.SCHED_OTHER
    assert seen["nice_after"] == seen["nice"]


def _rt_allowed() -> bool:
    result: list[bool] = []
    th = threading.Thread(target=lambda: result.append(RealtimeWakeup().available))
    th.start()
    th.join()
    return result[0]


@linux_only
def test_keep_stays_real_time_through_the_work_and_a_plain_sleep_leaves_it() -> None:
    seen: dict[str, object] = {}

    def tick_thread() -> None:
        w = RealtimeWakeup()
        if not w.available:
            return
        w.sleep(0.005, keep=True)
        seen["after_keep"] = (os.sched_getscheduler(0), w.realtime)
        w.sleep(0, keep=True)  # an overrun tick (no time left to sleep) keeps it too
        seen["after_overrun"] = os.sched_getscheduler(0)
        w.sleep(0.005)
        seen["after_plain"] = (os.sched_getscheduler(0), w.realtime)

    th = threading.Thread(target=tick_thread)
    th.start()
    th.join()
    if not seen:
        pytest.skip("no permission for real-time priority on this machine (the fallback is tested above)")
    assert seen["after_keep"] == (os.SCHED_FIFO, True)
    assert seen["after_overrun"] == os.SCHED_FIFO
    assert seen["after_plain"] == (os.SCHED_OTHER, False)


class _ClassRecordingArm:
    """Records the scheduling class the tick's bus work runs in."""

    def __init__(self, fakes: Any, waits_block: bool | None) -> None:
        self._arm = fakes.FakeArm()
        self.classes: list[int] = []
        if waits_block is not None:
            self.bus_waits_block = waits_block

    def read_joints(self) -> Any:
        if threading.current_thread().name == "engine-actuator":
            self.classes.append(os.sched_getscheduler(0))
        return self._arm.read_joints()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arm, name)


@linux_only
@pytest.mark.parametrize(("waits_block", "expected"), [(True, "SCHED_FIFO"), (False, "SCHED_OTHER"),
                                                       (None, "SCHED_OTHER")])
def test_the_tick_works_real_time_only_on_a_bus_that_never_spins(
        make_engine: Any, fakes: Any, waits_block: bool | None, expected: str) -> None:
    if not _rt_allowed():
        pytest.skip("no permission for real-time priority on this machine")
    arm = _ClassRecordingArm(fakes, waits_block)
    engine = make_engine(arm, fakes.FakePolicy(), Settings())
    deadline = time.monotonic() + 5
    while len(arm.classes) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    engine.close(timeout=5.0)
    assert len(arm.classes) >= 10 and set(arm.classes) == {getattr(os, expected)}
