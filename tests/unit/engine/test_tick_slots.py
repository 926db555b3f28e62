"""The actuator's tick grid: which slot a tick runs in, and how late it is reported."""

from __future__ import annotations

import pytest

from lepetpal_tui.engine.actuator import slot_for

PERIOD = 1 / 30


def test_a_tick_on_time_keeps_its_slot() -> None:
    k, late, skipped = slot_for(10.0 + 5 * PERIOD + 0.002, 10.0, 5, PERIOD)
    assert (k, skipped) == (5, False)
    assert late == pytest.approx(0.002)


def test_a_stall_skips_to_the_current_slot_and_reports_the_whole_stall() -> None:
    # Due in slot 5, started 3.4 periods later: it runs in slot 8 (the missed goals are never sent), and
    # its lateness is the 3.4 periods of the stall, not the 0.4 period past slot 8.
    k, late, skipped = slot_for(10.0 + 8.4 * PERIOD, 10.0, 5, PERIOD)
    assert (k, skipped) == (8, True)
    assert late == pytest.approx(3.4 * PERIOD)


def test_just_under_a_period_late_is_late_not_skipped() -> None:
    k, late, skipped = slot_for(10.0 + 5.99 * PERIOD, 10.0, 5, PERIOD)
    assert (k, skipped) == (5, False)
    assert late == pytest.approx(0.99 * PERIOD)
