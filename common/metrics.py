"""Metric names, types, tags, units and help text: the one place they are defined.

Two exporters share this spec:

* ``RayMetrics`` (in ``actors/ray_metrics.py``, next to the other Ray wrappers) — used inside Ray
  processes (actors, the learner). It records through ``ray.util.metrics``; Ray exports every metric at its node's ``--metrics-export-port``
  with the prefix ``ray_``: ``relaxrl_q_value`` is scraped as ``ray_relaxrl_q_value``.
  Without Ray (unit tests, a learner stepped by hand) it validates every call and keeps
  the last values (:meth:`RayMetrics.snapshot`) but exports nothing.
* :class:`PrometheusMetrics` — used by the replay service (``relaxrl replay serve``), an
  ordinary process that serves its own Prometheus endpoint with ``prometheus-client``;
  its names are exported as they are written here, without a prefix.

The prefix rule, used by the Grafana dashboard and its tests: the name to write in PromQL is
:func:`promql_name` — ``"ray_" + name`` for metrics whose exporter is ``"ray"``, the name
itself for exporter ``"prometheus"``. Counters already end in ``_total`` here, and both
exporters keep that suffix as it is; histograms add ``_bucket``, ``_sum`` and ``_count``.

Units follow the project's: Å, eV, eV/Å. Help text says what the value is and what an
abnormal value means (the "diagnostics to watch" of the design notes).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import prometheus_client as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from common.names import ACTOR_KINDS, TABLE_NAMES

MetricKind = Literal["gauge", "counter", "histogram"]
Exporter = Literal["ray", "prometheus"]

RAY_PREFIX = "ray_"
"""Prefix Ray puts in front of every ``ray.util.metrics`` name when it exports it."""

TABLE_TAG = "table"
"""The label naming a replay table: any name of the run's ``replay.tables`` (an open set; the replay service
exports one series per table of its list)."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how it is exported, what it measures and what to watch for."""

    name: str
    """Prometheus name (``relaxrl_...``); unit suffix included, counters end in ``_total``."""
    kind: MetricKind
    """``gauge`` (last value), ``counter`` (monotonic total) or ``histogram`` (distribution)."""
    unit: str
    """Unit of the value: ``Å``, ``eV/Å``, ``1`` (dimensionless ratio), ``reward``, ``count``..."""
    help: str
    """What the value is, and what an abnormal value means."""
    exporter: Exporter
    """``ray`` (recorded in Ray processes, exported as ``ray_<name>``) or ``prometheus``
    (the replay service's own endpoint, exported as ``<name>``)."""
    emitted_by: str
    """Which component records it: ``actors``, ``learner`` or ``replay service``."""
    tag_keys: tuple[str, ...] = ()
    """Label names; every recording must give exactly these."""
    tag_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Allowed values per label, for labels with a closed set (others accept any string)."""
    boundaries: tuple[float, ...] = ()
    """Histogram bucket upper bounds (histograms only)."""

    @property
    def description(self) -> str:
        """Help text with the unit, as shown in ``# HELP`` lines and Grafana tooltips."""
        return f"{self.help} Unit: {self.unit}."

    @property
    def ascii_description(self) -> str:
        """:attr:`description` spelled in ASCII (Å -> Angstrom, λ -> lambda, ...): Ray's
        metric objects reject descriptions that are not ASCII."""
        text = self.description
        for uni, asc in _ASCII.items():
            text = text.replace(uni, asc)
        return text.encode("ascii", "replace").decode("ascii")


_ASCII = {"Å": "Angstrom", "λ": "lambda", "γ": "gamma", "α": "alpha", "‖": "||", "−": "-", "²": "^2",
          "·": "*", "→": "->", "≥": ">=", "≤": "<="}
"""Transliteration of the non-ASCII characters the help texts use."""


def _spec(*specs: MetricSpec) -> dict[str, MetricSpec]:
    out: dict[str, MetricSpec] = {}
    for s in specs:
        if s.name in out:
            raise ValueError(f"metric {s.name} defined twice")
        out[s.name] = s
    return out


METRICS: dict[str, MetricSpec] = _spec(
    # ---- actors ------------------------------------------------------------------------
    MetricSpec(
        "relaxrl_actual_move_angstrom", "gauge", "Å",
        "Mean per-atom length of the displacement the environment applied after its "
        "correction (a_actual), last step of this actor. Near 0 while relaxrl_fmax_ev_per_angstrom "
        "stays large means the agent is hitting walls: its moves are taken back because "
        "atoms would come too close.",
        "ray", "actors",
    ),
    MetricSpec(
        "relaxrl_a_back_ratio", "gauge", "1",
        "Fraction of the proposed move the environment took back (0 = applied untouched, "
        "1 = all taken back), mean over the last step's atoms. Staying high means the policy "
        "keeps proposing moves the environment must correct; the deviation penalty and the "
        "a_back reward should bring it down.",
        "ray", "actors",
    ),
    MetricSpec(
        "relaxrl_fmax_ev_per_angstrom", "gauge", "eV/Å",
        "Largest per-atom force at the end of this actor's last episode. It should fall "
        "towards the run's fmax as training goes on; flat while relaxrl_q_value rises means "
        "the critic overestimates.",
        "ray", "actors",
    ),
    MetricSpec(
        "relaxrl_episode_force_calls", "histogram", "force calls",
        "Calculator force evaluations per finished episode (the cost a relaxation pays). "
        "Falling with constant success means the agent relaxes faster; pinned at the step "
        "limit means episodes end by truncation, not convergence. Ray reports each "
        "observation at its bucket's midpoint, so the _sum (and the mean) is approximate.",
        "ray", "actors",
        boundaries=(2, 5, 10, 20, 50, 100, 200, 500, 1000),
    ),
    MetricSpec(
        "relaxrl_success_ratio", "gauge", "1",
        "Share of this actor's recent episodes that reached fmax before the step limit "
        "(0 to 1). Falling after a curriculum stage change is expected; falling at a fixed "
        "stage means the policy got worse.",
        "ray", "actors",
    ),
    MetricSpec(
        "relaxrl_env_steps_total", "counter", "steps",
        "Environment steps taken, by actor kind (online = policy, expert = one BFGS step). "
        "Its sum over kinds is t_total, the x-axis of every training curve; a flat rate "
        "means actors are stuck or dead.",
        "ray", "actors",
        tag_keys=("kind",), tag_values={"kind": ACTOR_KINDS},
    ),
    # ---- learner -----------------------------------------------------------------------
    MetricSpec(
        "relaxrl_action_scale", "gauge", "1",
        "Mean output of the actor network's env gate (the scale of the proposed "
        "displacement; exactly 1 when env_input_dim = 0). Tending to 0 means the policy "
        "hides from the penalties by not moving at all.",
        "ray", "online actors, learner",
    ),
    MetricSpec(
        "relaxrl_q_value", "gauge", "reward",
        "Mean critic estimate Q(s, a) over the last training batch, in reward units "
        "(expected discounted return). Compare with relaxrl_batch_reward: Q that keeps "
        "rising while forces (relaxrl_fmax_ev_per_angstrom) do not fall means the critic "
        "overestimates.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_batch_reward", "gauge", "reward",
        "Mean one-step reward of the last training batch (the forces actually felt, "
        "shaped). Should rise as relaxations improve; read it next to relaxrl_q_value.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_td_error", "gauge", "reward",
        "Mean absolute TD error |r + γ·Q'(s', a') − Q(s, a)| of the last batch (it sets "
        "the new replay priorities). Growing without bound means the critic diverges; "
        "large jumps point at stale transitions (replay too large for the policy's pace).",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_learner_updates_total", "counter", "updates",
        "Learner updates (TD3 steps) done. A flat rate means the learner waits for "
        "replay (min size or rate limiter) or has stopped.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_weights_version", "gauge", "updates",
        "Update count of the newest published actor weights. Far behind "
        "relaxrl_learner_updates_total means weights are published too rarely and actors "
        "act with a stale policy.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_bc_weight", "gauge", "1",
        "Current behaviour-cloning weight λ_bc(t) on expert samples. It should decay on "
        "schedule; a policy that collapses once it is small has not learned beyond BFGS yet.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_loss", "gauge", "loss",
        "Last value of each learner loss, by name: critic (TD loss), actor (−Q + "
        "penalties), bc (behaviour cloning), deviation (‖a_pred − a_actual‖²). A critic "
        "loss that swings by orders of magnitude points at stale replay (buffers too large).",
        "ray", "learner",
        tag_keys=("name",),
    ),
    MetricSpec(
        "relaxrl_eval_success_ratio", "gauge", "1",
        "Live evaluation (every run.eval_every updates): share of the run's fixed sample of held-out "
        "structures the current actor relaxes greedily (no exploration noise) within env.max_steps, "
        "success as in relaxrl eval (converged, within 1 meV/atom of the best minimum, not fragmented). "
        "The real objective: falling while relaxrl_q_value rises means the critic is fooled.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_eval_force_calls_vs_bfgs_ratio", "gauge", "1",
        "Live evaluation: mean force calls of the current actor over those of BFGS on the sample "
        "structures both solved (below 1 = fewer calls than BFGS). Undefined while the actor solves "
        "none of them: the gauge then keeps its last value (metrics.jsonl writes null), so read it "
        "next to relaxrl_eval_success_ratio.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_eval_q_value", "gauge", "1",
        "Live evaluation: mean critic estimate Q1(s, pi(s)) over the greedy actor's steps on the sample "
        "(the same steps as relaxrl_eval_return). Read the two together: Q is an estimate of that return, "
        "so a gap that grows means the critic is wrong about the policy it trains.",
        "ray", "learner",
    ),
    MetricSpec(
        "relaxrl_eval_return", "gauge", "1",
        "Live evaluation: mean observed discounted return-to-go (learner.gamma) of the greedy actor's steps "
        "on the sample, what relaxrl_eval_q_value estimates.",
        "ray", "learner",
    ),
    # ---- replay service ------------------------------------------------------------------
    MetricSpec(
        "relaxrl_replay_size", "gauge", "transitions",
        "Transitions held in each replay table. Stuck below min_size_to_sample keeps the "
        "learner waiting; at capacity, FIFO eviction is on (expected).",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_inserts_total", "counter", "transitions",
        "Transitions inserted into each replay table (the tables of replay.tables). Its rate is the data the "
        "actors produce; a teacher table's rate (expert) should fall as nfake decays.",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_samples_total", "counter", "transitions",
        "Transitions sampled from each replay table. samples/inserts much above 1 means "
        "each transition is replayed many times (overfitting risk); each table's share of "
        "samples should stay near its share of a batch (the teacher tables': learner.expert_fraction).",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_capacity", "gauge", "transitions",
        "Capacity (max_size) of each replay table; FIFO eviction starts when relaxrl_replay_size "
        "reaches it. Small systems want small tables (1k-5k): larger ones keep stale transitions "
        "whose Bellman targets no longer match the policy.",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_up", "gauge", "1",
        "1 when the replay service reached Redis at this scrape, 0 when it did not: then actors "
        "cannot insert and the learner cannot sample.",
        "prometheus", "replay service",
    ),
    MetricSpec(
        "relaxrl_replay_priority_min", "gauge", "priority",
        "Smallest sampling priority in each table (priorities follow |TD error|^α).",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_priority_mean", "gauge", "priority",
        "Mean sampling priority in each table. Rising with relaxrl_td_error means the critic "
        "fits worse; falling towards the minimum means prioritization no longer selects anything.",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_priority_max", "gauge", "priority",
        "Largest sampling priority in each table. Far above the mean means a few transitions "
        "dominate every batch (their importance weights are small).",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_priority_updates_total", "counter", "transitions",
        "Priority updates the learner sent back, per table. Its rate should follow "
        "relaxrl_replay_samples_total; a lag means updates are lost or late.",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_stale_updates_total", "counter", "transitions",
        "Priority updates ignored because FIFO eviction had already overwritten the slot. A "
        "large share of all updates means the table turns over faster than the learner "
        "answers: sample less far ahead or enlarge the table.",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_decode_errors_total", "counter", "transitions",
        "Stored items that failed to decode when sampled and were quarantined (priority 0, bytes "
        "kept under the table's quarantine hash). Any value above 0 means something wrote bad "
        "bytes into the table or a writer runs another codec version: inspect client.quarantined().",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG,),
    ),
    MetricSpec(
        "relaxrl_replay_rate_limiter_waits_total", "counter", "calls",
        "Calls that had to wait for the rate limiter, by table and operation. Sample waits: "
        "the learner is starved (too few actors or min_size_to_sample not reached); insert "
        "waits: actors are throttled because the learner falls behind samples_per_insert.",
        "prometheus", "replay service",
        tag_keys=(TABLE_TAG, "op"), tag_values={"op": ("insert", "sample")},
    ),
)
"""Every metric relaxrl exports, by Prometheus name."""

REPLAY_METRIC_NAMES: tuple[str, ...] = tuple(n for n, s in METRICS.items() if s.exporter == "prometheus")
"""The replay service's metrics (its endpoint exports them; see :func:`prometheus_family` and
:func:`replay_prometheus_registry`)."""

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promql_name(name: str) -> str:
    """The series name to write in PromQL for metric ``name`` (see the prefix rule above)."""
    spec = get_spec(name)
    return RAY_PREFIX + spec.name if spec.exporter == "ray" else spec.name


def spec_for_promql_name(series: str) -> MetricSpec | None:
    """Inverse of :func:`promql_name`, accepting histogram suffixes; None if not ours."""
    candidates = [series] + [series[: -len(s)] for s in _HISTOGRAM_SUFFIXES if series.endswith(s)]
    for cand in candidates:
        for spec in METRICS.values():
            if promql_name(spec.name) == cand and (cand == series or spec.kind == "histogram"):
                return spec
    return None


def get_spec(name: str) -> MetricSpec:
    """The spec of ``name``; a ValueError lists the valid names when it is unknown."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; common/metrics.py defines: {', '.join(METRICS)}") from None


_METHOD_KIND: dict[str, MetricKind] = {"set": "gauge", "inc": "counter", "observe": "histogram"}


def _check(method: str, name: str, value: Any, tags: Mapping[str, Any], exporter: Exporter) -> tuple[MetricSpec, float, dict[str, str]]:
    """Validate one recording against the spec; return (spec, value as float, tags as str)."""
    spec = get_spec(name)
    if spec.exporter != exporter:
        where = "RayMetrics (Ray processes)" if spec.exporter == "ray" else "PrometheusMetrics (replay service)"
        raise ValueError(f"metric {name} is exported by {spec.exporter!r}; record it through {where}")
    want = _METHOD_KIND[method]
    if spec.kind != want:
        right = {v: k for k, v in _METHOD_KIND.items()}[spec.kind]
        raise ValueError(f"metric {name} is a {spec.kind}; use .{right}(), not .{method}()")
    if set(tags) != set(spec.tag_keys):
        raise ValueError(f"metric {name} takes tags {list(spec.tag_keys)}, got {sorted(tags)}")
    str_tags = {k: str(v) for k, v in tags.items()}
    for k, allowed in spec.tag_values.items():
        if str_tags[k] not in allowed:
            raise ValueError(f"metric {name}: tag {k}={str_tags[k]!r} is not one of {list(allowed)}")
    try:
        x = float(value)  # accepts numpy / 0-d torch scalars
    except (TypeError, ValueError):
        raise ValueError(f"metric {name}: value {value!r} is not a number") from None
    if spec.kind != "gauge" and not math.isfinite(x):
        raise ValueError(f"metric {name}: {spec.kind} value must be finite, got {x}")
    if spec.kind == "counter" and x < 0:
        raise ValueError(f"metric {name}: a counter only increases, got inc({x})")
    return spec, x, str_tags


SnapshotKey = tuple[str, tuple[tuple[str, str], ...]]


class _Recorder:
    """Shared part of both exporters: validation and the last values, per (name, tags)."""

    def __init__(self) -> None:
        self._last: dict[SnapshotKey, float] = {}

    def _remember(self, spec: MetricSpec, x: float, tags: dict[str, str]) -> None:
        key = (spec.name, tuple(sorted(tags.items())))
        self._last[key] = self._last.get(key, 0.0) + x if spec.kind == "counter" else x

    def snapshot(self) -> dict[SnapshotKey, float]:
        """Last value per (name, sorted tag items): gauges as set, counters as totals
        recorded through this object, histograms as the last observation."""
        return dict(self._last)

    def value(self, metric: str, /, **tags: Any) -> float | None:
        """The snapshot value of one series, or None if it was never recorded."""
        return self._last.get((metric, tuple(sorted((k, str(v)) for k, v in tags.items()))))


class PrometheusMetrics(_Recorder):
    """The replay service's metrics on a ``prometheus_client`` registry of their own.

    Same ``set``/``inc``/``observe`` calls as :class:`RayMetrics`; :meth:`serve` starts the
    HTTP endpoint Prometheus scrapes (``deploy/prometheus.yml``, job ``relaxrl-replay``).
    """

    def __init__(self, names: tuple[str, ...] = REPLAY_METRIC_NAMES, registry: Any | None = None,
                 tables: tuple[str, ...] = TABLE_NAMES) -> None:
        super().__init__()
        self.registry = registry if registry is not None else pc.CollectorRegistry(auto_describe=True)
        """The ``prometheus_client.CollectorRegistry`` holding the collectors."""
        self._collectors: dict[str, Any] = {}
        for name in names:
            spec = get_spec(name)
            if spec.exporter != "prometheus":
                raise ValueError(f"metric {name} is exported by Ray; PrometheusMetrics only takes "
                                 f"{list(REPLAY_METRIC_NAMES)}")
            labels = list(spec.tag_keys)
            if spec.kind == "gauge":
                c = pc.Gauge(spec.name, spec.description, labels, registry=self.registry)
            elif spec.kind == "counter":
                # prometheus_client strips and re-adds the _total suffix; exported name == spec name.
                c = pc.Counter(spec.name, spec.description, labels, registry=self.registry)
            else:
                c = pc.Histogram(spec.name, spec.description, labels, registry=self.registry,
                                 buckets=list(spec.boundaries) + [float("inf")])
            self._collectors[name] = c
            # Closed label sets (and the given tables) start at 0, so rates and sizes exist before the first event.
            for values in _label_product(spec, {TABLE_TAG: tables}):
                child = c.labels(**values) if labels else c
                if spec.kind == "gauge":
                    child.set(0)

    def _child(self, spec: MetricSpec, tags: dict[str, str]) -> Any:
        try:
            c = self._collectors[spec.name]
        except KeyError:
            raise ValueError(f"metric {spec.name} is not registered here; registered: {list(self._collectors)}") from None
        return c.labels(**tags) if tags else c

    def set(self, metric: str, value: float, /, **tags: Any) -> None:
        """Set gauge ``metric`` to ``value``."""
        spec, x, t = _check("set", metric, value, tags, "prometheus")
        self._child(spec, t).set(x)
        self._remember(spec, x, t)

    def inc(self, metric: str, value: float = 1, /, **tags: Any) -> None:
        """Add ``value`` (≥ 0) to counter ``metric``."""
        spec, x, t = _check("inc", metric, value, tags, "prometheus")
        self._child(spec, t).inc(x)
        self._remember(spec, x, t)

    def observe(self, metric: str, value: float, /, **tags: Any) -> None:
        """Add one observation to histogram ``metric``."""
        spec, x, t = _check("observe", metric, value, tags, "prometheus")
        self._child(spec, t).observe(x)
        self._remember(spec, x, t)

    def serve(self, port: int, host: str = "127.0.0.1") -> tuple[Any, Any]:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; returns (server, thread).

        Call ``server.shutdown()`` to stop it. A port already in use raises OSError.
        """
        return pc.start_http_server(port, addr=host, registry=self.registry)


def _label_product(spec: MetricSpec, open_values: Mapping[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """Every label combination of ``spec`` when each of its labels has a closed value set or values in ``open_values``."""
    values = {**open_values, **spec.tag_values}
    if any(k not in values for k in spec.tag_keys):
        return []
    combos: list[dict[str, str]] = [{}]
    for k in spec.tag_keys:
        combos = [{**c, k: v} for c in combos for v in values[k]]
    return combos


def prometheus_family(name: str, labels: list[str] | None = None) -> Any:
    """An empty ``prometheus_client`` metric family for spec metric ``name``, for custom
    collectors that read their values at scrape time (the replay service reads Redis)::

        size = prometheus_family("relaxrl_replay_size")
        size.add_metric(["online"], 120.0)

    Name, type, help text and label names come from the spec (``labels`` may only repeat them).
    """
    spec = get_spec(name)
    if spec.exporter != "prometheus":
        raise ValueError(f"metric {name} is exported by Ray, not by a prometheus-client collector")
    if labels is not None and list(labels) != list(spec.tag_keys):
        raise ValueError(f"metric {name} takes labels {list(spec.tag_keys)}, got {labels}")
    cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}[spec.kind]
    # CounterMetricFamily drops a trailing _total and exposes <name>_total again.
    return cls(spec.name, spec.description, labels=list(spec.tag_keys))


def replay_prometheus_registry(tables: tuple[str, ...] = TABLE_NAMES) -> PrometheusMetrics:
    """A fresh :class:`PrometheusMetrics` with every replay-service metric of the spec
    (``relaxrl_replay_size``, ``relaxrl_replay_inserts_total``, ... by ``table``, the series of
    ``tables`` at 0 from the start), for code that pushes values as events happen; ``.registry`` is
    the prometheus-client registry and ``.serve(port, host)`` exposes it. A collector that reads
    Redis at scrape time uses :func:`prometheus_family` instead."""
    return PrometheusMetrics(REPLAY_METRIC_NAMES, tables=tuple(tables))
