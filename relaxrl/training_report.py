"""What a run directory shows a person: PNG curves against t_total.

    plot_run(run_dir)                           # run_dir/plots/*.png from metrics.jsonl (and live_eval.jsonl)

The held-out evaluation after training is `relaxrl eval`'s
(:func:`relaxrl.after_training.evaluate_after_training`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from common.config import EnvConfig
from relaxrl.reports import pyplot

LIVE_EVAL_FILE = "live_eval.jsonl"
"""A run directory's per-structure live evaluations (relaxrl.live_eval, ``LiveEval(log_path=...)``)."""

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("actual_move", "actual move (Å, mean per atom)", [("actors/actual_move", "actors"), ("charts/actual_move", "replay batch")]),
    ("q_vs_reward", "Q(s,a) vs observed discounted return",
     [("charts/q_value", "Q(s,a), replay batch mean"), ("charts/target", "TD target r + γⁿQ'(s',a')"),
      ("actors/episode_return", "observed Σ γ^k r, mean return-to-go of online episodes"),
      ("actors/reward", "actor step reward"),
      ("eval/q", "greedy eval: Q(s, π(s)) of its steps"),
      ("eval/return", "greedy eval: observed Σ γ^k r of the same steps")]),
    ("action_scale", "action scale (env gate)", [("actors/action_scale", "online actors")]),
    ("a_back", "a_back (fraction taken back)", [("actors/a_back", "online actors")]),
    ("fmax_success", "Fmax (eV/Å, log) and success (right axis)",
     [("actors/fmax", "step Fmax"), ("episodes/online_success", "online success"), ("episodes/expert_success", "expert success"),
      ("actors/saddle", "online episodes ending on a saddle (env.saddle_check_atoms)"),
      ("actors/above_reference", "online episodes ending above the reference minimum (env.reference_tolerance)")]),
    ("losses", "losses", [("losses/critic", "critic"), ("losses/actor", "actor"), ("losses/bc", "bc"), ("losses/deviation", "deviation")]),
    ("replay_sizes", "replay table sizes", []),  # one series per table of the run: replay_size_series
    ("live_eval", "live evaluation: greedy actor on the held-out sample (run.eval_every)",
     [("eval/force_calls_vs_bfgs", "force calls / BFGS's (both solved)"),
      ("eval/untrained_force_calls_vs_bfgs", "untrained policy, same sample"),
      ("eval/success", "success (right axis)")]),
]


def replay_size_series(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, table name) of every ``replay/<table>_size`` in the rows, in the order the tables first appear."""
    keys = dict.fromkeys(k for r in rows for k in r if k.startswith("replay/") and k.endswith("_size"))
    return [(k, k[len("replay/"):-len("_size")]) for k in keys]


def points(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(t_total, value) of the rows that hold ``key`` with a value (null, NaN written as null, is left out)."""
    return [(r["t_total"], r[key]) for r in rows if r.get(key) is not None and "t_total" in r]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when it does not exist); a line cut by a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: skip it, keep the rest
                continue
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


Q_CLIP_PERCENTILES = (2.0, 98.0)
"""The Q panel's y-range: these percentiles of its values after the first Q_CLIP_SKIP of the rows."""
Q_CLIP_SKIP = 0.1


def _env_input_dim(run_dir: Path) -> int | None:
    """``env.env_input_dim`` of the run's config.toml (None without one).

    Read from the TOML itself (default: the field's default), so a run written by an older
    version whose other keys no longer load still gets its panels right."""
    path = run_dir / "config.toml"
    try:
        env = tomllib.loads(path.read_text()).get("env", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return int(env.get("env_input_dim", EnvConfig.env_input_dim))


def _q_ylim(rows: list[dict[str, Any]], keys: list[str]) -> tuple[float, float] | None:
    """Percentile y-range of the Q panel's series after the early rows (the start spike)."""
    later = rows[int(len(rows) * Q_CLIP_SKIP):]
    vals = np.asarray([r[k] for r in later for k in keys if isinstance(r.get(k), (int, float))], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size < 2:
        return None
    lo, hi = np.percentile(vals, Q_CLIP_PERCENTILES)
    pad = 0.1 * max(hi - lo, 1e-6)
    return float(lo - pad), float(hi + pad)


def _draw_series(ax: Any, rows: list[dict[str, Any]], series: list[tuple[str, str]]) -> tuple[int, Any]:
    """Draw each (key, label) that has points on ``ax``, rates on a twin 0..1 axis; (lines drawn, the twin or None)."""
    drawn, twin = 0, None
    for key, label in series:
        pts = points(rows, key)
        if pts:
            x, y = zip(*pts)
            target = ax
            if key.endswith(("success", "saddle")):  # rates on their own 0..1 axis
                twin = twin or ax.twinx()
                twin.set_ylim(-0.02, 1.02)
                twin.set_ylabel("success rate")
                target = twin
            style = {"ls": ":", "lw": 1.0} if key == "actors/reward" else {"lw": 1.4}
            if key.startswith("eval/"):  # one point every run.eval_every updates: show each
                style["marker"] = "o"
                style["ms"] = 4
            target.plot(x, y, label=label, color=f"C{drawn}", **style)
            drawn += 1
    return drawn, twin


def plot_run(run_dir: str | Path) -> list[Path]:
    """One PNG per panel, x-axis t_total; returns the files written.

    The live-evaluation panel (``eval/*``, every ``run.eval_every`` updates) draws each evaluation
    as a point: force calls relative to BFGS on the left axis (1 = BFGS, dashed), success on the right.
    The Q panel clips its y-range to the 2nd–98th percentile of the values after the first 10 %
    of the rows (said in its title). The action-scale panel says 'off' instead of drawing the
    constant 1 when the run's ``env.env_input_dim`` is 0 (the env gate does not exist)."""
    plt = pyplot()

    rows = read_metrics(run_dir)
    gate_off = _env_input_dim(Path(run_dir)) == 0
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, series in PANELS:
        series = replay_size_series(rows) if name == "replay_sizes" else series
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if name == "action_scale" and gate_off:
            series = []
            title = "action scale: off (env.env_input_dim = 0)"
            ax.text(0.5, 0.5, "env gate off: the policy's moves are not rescaled\n(action scale is 1 by construction)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=9)
        drawn, twin = _draw_series(ax, rows, series)
        if name == "fmax_success" and drawn:
            ax.set_yscale("log")
        if name == "live_eval" and points(rows, "eval/force_calls_vs_bfgs"):
            ax.axhline(1.0, color="grey", ls="--", lw=0.8, label="BFGS (= 1)")
            ax.set_ylabel("force calls / BFGS's")
        if twin is not None:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = twin.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=8)
        ax.set_xlabel("t_total (environment steps)")
        ax.set_title(title)
        if name == "q_vs_reward" and drawn:
            lim = _q_ylim(rows, [k for k, _ in series])
            if lim is not None:
                ax.set_ylim(*lim)
                ax.set_title(f"{title}\n(y clipped to the 2nd–98th percentile after the first 10 % of rows)",
                             fontsize=9)
        if name == "losses" and drawn:
            ax.set_yscale("symlog")
        if drawn and twin is None:
            ax.legend(fontsize=7 if name == "q_vs_reward" else 8)
        elif not drawn and not (name == "action_scale" and gate_off):
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    structures = plot_live_structures(run_dir)
    return written + ([structures] if structures is not None else [])


def read_live_structures(run_dir: str | Path) -> tuple[dict[str, int], dict[str, list[tuple[int, int, bool]]]]:
    """From run_dir/live_eval.jsonl (:data:`LIVE_EVAL_FILE`): the untrained policy's force
    calls per structure, and per structure the trained policy's (updates, force calls, success) by updates (a
    resumed run evaluates some updates again: the newest line wins)."""
    untrained: dict[str, int] = {}
    by_update: dict[int, list[dict[str, Any]]] = {}
    for row in read_jsonl(Path(run_dir) / LIVE_EVAL_FILE):
        if row.get("policy") == "untrained":
            untrained = {s["name"]: s["force_calls"] for s in row["structures"]}
        else:
            by_update[int(row["updates"])] = row["structures"]
    curves: dict[str, list[tuple[int, int, bool]]] = {}
    for updates in sorted(by_update):
        for s in by_update[updates]:
            curves.setdefault(s["name"], []).append((updates, s["force_calls"], bool(s["success"])))
    return untrained, curves


def plot_live_structures(run_dir: str | Path) -> Path | None:
    """run_dir/plots/live_eval_structures.png: each live-sample structure's force calls over its untrained
    policy's, against updates (log x), a cross where the run failed (None without live_eval.jsonl rows)."""
    untrained, curves = read_live_structures(run_dir)
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves.items():
        base = untrained.get(name)
        if not base:
            continue
        xs = [u for u, _, _ in pts]
        ys = [c / base for _, c, _ in pts]
        line, = ax.plot(xs, ys, marker=".", lw=1, label=name)
        failed = [(u, c / base) for u, c, ok in pts if not ok]
        if failed:
            ax.plot(*zip(*failed), ls="none", marker="x", color=line.get_color(), ms=8)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("learner updates")
    ax.set_ylabel("force calls / untrained policy's")
    ax.set_title("live evaluation per structure (× = not a success)", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / "plots" / "live_eval_structures.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
