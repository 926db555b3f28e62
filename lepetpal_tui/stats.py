"""Small statistics shared by the session summary, the UI's latency pane and the benchmarks (a leaf:
numbers in, numbers out), so their figures agree."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values. The one definition used by the session
    summary, the UI's latency pane and the benchmarks, so their figures agree."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
