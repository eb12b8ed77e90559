"""Recording relaxrl metrics from Ray processes (actors, the learner's driver).

The names, units, help text and validation live in :mod:`common.metrics`; this module only
adapts them to ``ray.util.metrics``, so Ray stays in the modules that wrap processes.
"""
from __future__ import annotations

import math
from typing import Any

import ray
from ray.util import metrics as rm

from common.metrics import MetricSpec, _check, _Recorder

# Ray metric objects are per process and keyed by name: two RayMetrics in one process (a
# laptop run with actors and learner side by side) share them instead of registering twice.
_RAY_OBJECTS: dict[str, Any] = {}


class RayMetrics(_Recorder):
    """Record relaxrl metrics from inside a Ray actor or the learner.

    >>> m = RayMetrics()
    >>> m.set("relaxrl_q_value", 1.5)
    >>> m.inc("relaxrl_env_steps_total", 8, kind="online")
    >>> m.observe("relaxrl_episode_force_calls", 37)
    >>> m.set("relaxrl_loss", 0.3, name="critic")   # tags are keyword arguments

    The metric and the value are positional-only, so a tag may be called ``name``.

    Ray metric objects are created on first use, only while Ray is initialised
    (``ray.is_initialized()``); otherwise each call is validated and remembered but not
    exported, so code that records metrics runs unchanged in plain unit tests.

    A gauge set to NaN or ±inf is remembered but not handed to Ray, whose exporter then drops
    every metric of the node (measured with Ray 2.60); Ray keeps the gauge's last finite value.
    """

    def set(self, metric: str, value: float, /, **tags: Any) -> None:
        """Set gauge ``metric`` to ``value``."""
        spec, x, t = _check("set", metric, value, tags, "ray")
        self._remember(spec, x, t)
        metric = self._ray_metric(spec)
        if metric is not None and math.isfinite(x):  # one NaN gauge stops Ray exporting every metric of the node
            metric.set(x, tags=t or None)

    def inc(self, metric: str, value: float = 1, /, **tags: Any) -> None:
        """Add ``value`` (≥ 0; 0 is a no-op) to counter ``metric``."""
        spec, x, t = _check("inc", metric, value, tags, "ray")
        if x == 0:
            return
        self._remember(spec, x, t)
        metric = self._ray_metric(spec)
        if metric is not None:
            metric.inc(x, tags=t or None)

    def observe(self, metric: str, value: float, /, **tags: Any) -> None:
        """Add one observation ``value`` to histogram ``metric``."""
        spec, x, t = _check("observe", metric, value, tags, "ray")
        self._remember(spec, x, t)
        metric = self._ray_metric(spec)
        if metric is not None:
            metric.observe(x, tags=t or None)

    @property
    def exporting(self) -> bool:
        """True when recordings reach Ray's exporter (Ray is initialised in this process)."""
        return ray.is_initialized()

    @staticmethod
    def _ray_metric(spec: MetricSpec) -> Any | None:
        if not ray.is_initialized():
            return None
        metric = _RAY_OBJECTS.get(spec.name)
        if metric is None:
            if spec.kind == "gauge":
                metric = rm.Gauge(spec.name, spec.ascii_description, tag_keys=spec.tag_keys)
            elif spec.kind == "counter":
                metric = rm.Counter(spec.name, spec.ascii_description, tag_keys=spec.tag_keys)
            else:
                metric = rm.Histogram(spec.name, spec.ascii_description, boundaries=list(spec.boundaries),
                                      tag_keys=spec.tag_keys)
            _RAY_OBJECTS[spec.name] = metric
        return metric
