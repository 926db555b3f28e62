"""The one percentile definition shared by the session summary, the UI and the benchmarks."""

from __future__ import annotations

import math

from lepetpal_tui.stats import percentile


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_empty_is_nan() -> None:
    assert math.isnan(percentile([], 50))
