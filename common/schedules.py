"""Schedules of training coefficients, as pure functions of a counter.

Each has the signature ``f(start, end, steps, t)``: ``start`` at t = 0, ``end`` from
t = ``steps`` on (``steps ≤ 0``: ``end`` always). :data:`SCHEDULES` names the shapes a
config may choose (``expert.schedule``).
"""
from __future__ import annotations

import math
from collections.abc import Callable


def _progress(steps: int, t: int | float) -> float:
    return min(max(float(t) / steps, 0.0), 1.0)


def linear(start: float, end: float, steps: int, t: int | float) -> float:
    """Straight line from ``start`` at t = 0 to ``end`` at t = ``steps``, constant after."""
    if steps <= 0:
        return float(end)
    return float(start + (end - start) * _progress(steps, t))


def exponential(start: float, end: float, steps: int, t: int | float) -> float:
    """``end + (start − end)·g(x)`` with ``g(x) = (e^(−5x) − e^(−5)) / (1 − e^(−5))``, x = t / steps.

    The endpoints are exact (``end`` may be 0) and most of the change happens early.
    """
    if steps <= 0:
        return float(end)
    x = _progress(steps, t)
    g = (math.exp(-5.0 * x) - math.exp(-5.0)) / (1.0 - math.exp(-5.0))
    return float(end + (start - end) * g)


SCHEDULES: dict[str, Callable[[float, float, int, int | float], float]] = {"linear": linear, "exponential": exponential}
"""Schedule shapes by the name a config uses."""
