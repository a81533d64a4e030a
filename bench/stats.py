"""The statistics every section reports: medians, and medians of per-round ratios."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i], round by round."""
    return [x / y for x, y in zip(a, b, strict=True)]


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of a[i] / b[i]: each pair ran back to back, so machine drift cancels."""
    return median(ratios(a, b))
