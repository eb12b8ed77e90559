"""Schedules of training coefficients, as pure functions of a counter."""
from __future__ import annotations

import math


def linear(start: float, end: float, steps: int, t: int | float) -> float:
    """Linear from ``start`` at t = 0 to ``end`` at t = ``steps``, constant after (steps ≤ 0: ``end``)."""
    if steps <= 0:
        return float(end)
    frac = min(max(float(t) / steps, 0.0), 1.0)
    return float(start + (end - start) * frac)


def exponential(start: float, end: float, steps: int, t: int | float) -> float:
    """Geometric interpolation from ``start`` to ``end`` over ``steps`` (both must be > 0)."""
    if steps <= 0:
        return float(end)
    if start <= 0 or end <= 0:
        raise ValueError(f"exponential schedule needs positive start and end, got {start}, {end}")
    frac = min(max(float(t) / steps, 0.0), 1.0)
    return float(start * math.exp(frac * math.log(end / start)))
