"""The tick's real-time wake-up: SCHED_FIFO only while it sleeps, back to normal (nice kept) when it runs;
a plain sleep where real-time priority is not allowed."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

from lepetpal_tui.engine.wakeup import RealtimeWakeup

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
