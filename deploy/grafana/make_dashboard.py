"""Generate deploy/grafana/dashboards/relaxrl.json from common/metrics.py.

    python deploy/grafana/make_dashboard.py          # rewrite the JSON
    python deploy/grafana/make_dashboard.py --check  # exit 1 if the JSON is out of date

Every query names its metrics through ``common.metrics.promql_name`` (``ray_`` prefix for
metrics recorded in Ray processes, none for the replay service's), and every panel's
description is the metrics' help text, so the dashboard cannot drift from the spec.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install

from common.metrics import get_spec, promql_name  # noqa: E402

OUT = Path(__file__).resolve().parent / "dashboards" / "relaxrl.json"
DATASOURCE = {"type": "prometheus", "uid": "relaxrl-prometheus"}
"""Matches deploy/grafana/provisioning/datasources/prometheus.yml."""
RATE = "$__rate_interval"


def m(name: str) -> str:
    """PromQL series name of spec metric ``name``."""
    return promql_name(name)


def target(ref: str, expr: str, legend: str) -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True}


def right_axis(ref: str, unit: str, min_: float | None = None, max_: float | None = None) -> dict[str, Any]:
    """Field override: series of query ``ref`` on the right axis with its own unit."""
    props: list[dict[str, Any]] = [
        {"id": "custom.axisPlacement", "value": "right"},
        {"id": "unit", "value": unit},
    ]
    if min_ is not None:
        props.append({"id": "min", "value": min_})
    if max_ is not None:
        props.append({"id": "max", "value": max_})
    return {"matcher": {"id": "byFrameRefID", "options": ref}, "properties": props}


class Layout:
    """Places panels on Grafana's 24-column grid, two per row, rows stacked downwards."""

    def __init__(self) -> None:
        self.y = 0
        self.x = 0
        self.next_id = 1
        self.panels: list[dict[str, Any]] = []

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def timeseries(self, title: str, metrics: list[str], targets: list[dict[str, Any]], unit: str,
                   overrides: list[dict[str, Any]] | None = None, min_: float | None = None,
                   max_: float | None = None, note: str = "") -> None:
        desc = " ".join(get_spec(n).description for n in metrics)
        defaults: dict[str, Any] = {
            "unit": unit,
            "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "showPoints": "never",
                       "spanNulls": True},
        }
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        self.panels.append({
            "type": "timeseries",
            "id": self._id(),
            "title": title,
            "description": (note + " " + desc).strip(),
            "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": self.x, "y": self.y},
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
        })
        if self.x:
            self.x = 0
            self.y += 8
        else:
            self.x = 12

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def build() -> dict[str, Any]:
    """The dashboard as a dict (Grafana JSON model)."""
    g = Layout()

    g.row("Diagnostics: is the agent learning to move?")
    g.timeseries(
        "Actual move (Å)", ["relaxrl_actual_move_angstrom"],
        [target("A", f"avg({m('relaxrl_actual_move_angstrom')})", "mean over actors"),
         target("B", f"min({m('relaxrl_actual_move_angstrom')})", "smallest actor")],
        "suffix: Å", min_=0,
        note="Alarm: near 0 while Fmax stays large = hitting walls.")
    g.timeseries(
        "Q value vs batch reward", ["relaxrl_q_value", "relaxrl_batch_reward"],
        [target("A", f"avg({m('relaxrl_q_value')})", "Q(s, a)"),
         target("B", f"avg({m('relaxrl_batch_reward')})", "batch reward (right axis)")],
        "none", overrides=[right_axis("B", "none")],
        note="Alarm: Q keeps rising while Fmax does not fall = the critic overestimates.")
    g.timeseries(
        "Action scale: off (env.env_input_dim = 0, the shipped presets) unless the env gate is on",
        ["relaxrl_action_scale"],
        [target("A", f"avg({m('relaxrl_action_scale')})", "action scale")],
        "none", min_=0,
        note="With env.env_input_dim = 0 (every shipped preset) there is no env gate and this is 1 by "
             "construction: a flat line at 1 is not data. With the gate on: alarm when it tends to 0 "
             "(the policy hides from penalties by not moving).")
    g.timeseries(
        "a_back: share of the move taken back", ["relaxrl_a_back_ratio"],
        [target("A", f"avg({m('relaxrl_a_back_ratio')})", "mean over actors"),
         target("B", f"max({m('relaxrl_a_back_ratio')})", "worst actor")],
        "percentunit", min_=0, max_=1)
    g.timeseries(
        "Fmax and success", ["relaxrl_fmax_ev_per_angstrom", "relaxrl_success_ratio"],
        [target("A", f"avg({m('relaxrl_fmax_ev_per_angstrom')})", "Fmax at episode end (eV/Å)"),
         target("B", f"avg({m('relaxrl_success_ratio')})", "success ratio (right axis)")],
        "suffix: eV/Å", overrides=[right_axis("B", "percentunit", 0, 1)], min_=0)
    g.timeseries(
        "Force calls per episode", ["relaxrl_episode_force_calls"],
        [target("A", f"histogram_quantile(0.5, sum by (le) (rate({m('relaxrl_episode_force_calls')}_bucket[{RATE}])))",
                "median"),
         target("B", f"histogram_quantile(0.9, sum by (le) (rate({m('relaxrl_episode_force_calls')}_bucket[{RATE}])))",
                "90th percentile")],
        "none", min_=0)

    g.row("Objective: live evaluation on held-out structures (run.eval_every)")
    g.timeseries(
        "Live eval: success and force calls vs BFGS",
        ["relaxrl_eval_success_ratio", "relaxrl_eval_force_calls_vs_bfgs_ratio"],
        [target("A", f"max({m('relaxrl_eval_force_calls_vs_bfgs_ratio')})",
                "force calls / BFGS's on the structures both solved (1 = BFGS)"),
         target("B", f"max({m('relaxrl_eval_success_ratio')})", "held-out success (right axis)")],
        "none", overrides=[right_axis("B", "percentunit", 0, 1)], min_=0,
        note="The real objective, measured by the learner every run.eval_every updates (no data when it is 0): "
             "the current actor without exploration noise on a fixed held-out sample.")
    g.timeseries(
        "Live eval: Q(s, π(s)) vs observed return of the same steps",
        ["relaxrl_eval_q_value", "relaxrl_eval_return"],
        [target("A", f"avg({m('relaxrl_eval_q_value')})", "critic Q1(s, π(s))"),
         target("B", f"avg({m('relaxrl_eval_return')})", "observed discounted return-to-go")],
        "none",
        note="Both on one axis: Q estimates that return. A gap that keeps growing means the critic "
             "is wrong about the greedy policy (the batch Q panel above mixes noisy and expert moves).")

    g.row("Throughput")
    g.timeseries(
        "Env steps/s and updates/s", ["relaxrl_env_steps_total", "relaxrl_learner_updates_total"],
        [target("A", f"sum by (kind) (rate({m('relaxrl_env_steps_total')}[{RATE}]))", "env steps/s ({{kind}})"),
         target("B", f"sum(rate({m('relaxrl_learner_updates_total')}[{RATE}]))", "learner updates/s")],
        "ops", min_=0)
    g.timeseries(
        "Weights version vs updates", ["relaxrl_weights_version", "relaxrl_learner_updates_total"],
        [target("A", f"max({m('relaxrl_weights_version')})", "published weights version"),
         target("B", f"sum({m('relaxrl_learner_updates_total')})", "learner updates")],
        "none", min_=0)

    g.row("Replay")
    g.timeseries(
        "Replay size", ["relaxrl_replay_size", "relaxrl_replay_capacity"],
        [target("A", f"sum by (table) ({m('relaxrl_replay_size')})", "{{table}}"),
         target("B", f"sum by (table) ({m('relaxrl_replay_capacity')})", "capacity ({{table}})")],
        "none", min_=0)
    g.timeseries(
        "Replay insert and sample rates", ["relaxrl_replay_inserts_total", "relaxrl_replay_samples_total"],
        [target("A", f"sum by (table) (rate({m('relaxrl_replay_inserts_total')}[{RATE}]))", "inserts/s ({{table}})"),
         target("B", f"sum by (table) (rate({m('relaxrl_replay_samples_total')}[{RATE}]))", "samples/s ({{table}})")],
        "ops", min_=0)

    g.timeseries(
        "Replay priorities", ["relaxrl_replay_priority_mean", "relaxrl_replay_priority_max",
                              "relaxrl_replay_priority_min"],
        [target("A", f"max by (table) ({m('relaxrl_replay_priority_mean')})", "mean ({{table}})"),
         target("B", f"max by (table) ({m('relaxrl_replay_priority_max')})", "max ({{table}})"),
         target("C", f"min by (table) ({m('relaxrl_replay_priority_min')})", "min ({{table}})")],
        "none", min_=0)
    g.timeseries(
        "Replay health", ["relaxrl_replay_up", "relaxrl_replay_rate_limiter_waits_total",
                          "relaxrl_replay_priority_updates_total", "relaxrl_replay_stale_updates_total",
                          "relaxrl_replay_decode_errors_total"],
        [target("A", f"min({m('relaxrl_replay_up')})", "Redis up (right axis)"),
         target("B", f"sum by (table, op) (rate({m('relaxrl_replay_rate_limiter_waits_total')}[{RATE}]))",
                "rate limiter waits/s ({{table}} {{op}})"),
         target("C", f"sum by (table) (rate({m('relaxrl_replay_priority_updates_total')}[{RATE}]))",
                "priority updates/s ({{table}})"),
         target("D", f"sum by (table) (rate({m('relaxrl_replay_stale_updates_total')}[{RATE}]))",
                "stale priority updates/s ({{table}})"),
         target("E", f"sum by (table) (increase({m('relaxrl_replay_decode_errors_total')}[{RATE}]))",
                "quarantined items ({{table}})")],
        "ops", overrides=[right_axis("A", "none", 0, 1)], min_=0)

    g.row("Learner")
    g.timeseries(
        "Losses", ["relaxrl_loss"],
        [target("A", f"avg by (name) ({m('relaxrl_loss')})", "{{name}}")],
        "none")
    g.timeseries(
        "TD error and BC weight", ["relaxrl_td_error", "relaxrl_bc_weight"],
        [target("A", f"avg({m('relaxrl_td_error')})", "mean |TD error|"),
         target("B", f"max({m('relaxrl_bc_weight')})", "λ_bc (right axis)")],
        "none", overrides=[right_axis("B", "none", 0)], min_=0)

    return {
        "uid": "relaxrl-training",
        "title": "relaxrl training",
        "description": "Actors, learner and replay of a relaxrl run. Generated by deploy/grafana/make_dashboard.py "
                       "from common/metrics.py; do not edit by hand.",
        "tags": ["relaxrl"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": g.panels,
    }


def render() -> str:
    """The dashboard JSON text exactly as committed."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def promql_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL ``expr`` in a dashboard JSON model (nested rows included)."""
    out: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that the committed JSON is up to date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python deploy/grafana/make_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
