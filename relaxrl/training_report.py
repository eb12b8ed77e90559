"""What a run directory shows a person: PNG curves against t_total and the held-out evaluation.

    plot_run(run_dir)                           # run_dir/plots/*.png from metrics.jsonl
    evaluate_policy(policy, structures, env_cfg)  # greedy rollouts through RelaxEnv
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("actual_move", "actual move (Å, mean per atom)", [("actors/actual_move", "actors"), ("charts/actual_move", "replay batch")]),
    ("q_vs_reward", "Q vs reward", [("charts/q_value", "Q(s,a)"), ("charts/batch_reward", "batch reward"), ("actors/reward", "actor step reward")]),
    ("action_scale", "action scale (env gate)", [("actors/action_scale", "online actors")]),
    ("a_back", "a_back (fraction taken back)", [("actors/a_back", "online actors")]),
    ("fmax_success", "Fmax (eV/Å, log) and success (right axis)", [("actors/fmax", "step Fmax"), ("episodes/online_success", "online success"), ("episodes/expert_success", "expert success")]),
    ("losses", "losses", [("losses/critic", "critic"), ("losses/actor", "actor"), ("losses/bc", "bc"), ("losses/deviation", "deviation")]),
    ("replay_sizes", "replay table sizes", [("replay/expert_size", "expert"), ("replay/online_size", "online")]),
]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
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


def plot_run(run_dir: str | Path) -> list[Path]:
    """One PNG per panel, x-axis t_total; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, series in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = 0
        twin = None
        for key, label in series:
            pts = [(r["t_total"], r[key]) for r in rows if r.get(key) is not None and "t_total" in r]
            if pts:
                x, y = zip(*pts)
                target = ax
                if key.endswith("_success"):  # rates on their own 0..1 axis
                    twin = twin or ax.twinx()
                    twin.set_ylim(-0.02, 1.02)
                    twin.set_ylabel("success rate")
                    target = twin
                target.plot(x, y, label=label, lw=1.4, color=f"C{drawn}")
                drawn += 1
        if name == "fmax_success" and drawn:
            ax.set_yscale("log")
        if twin is not None:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = twin.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=8)
        ax.set_xlabel("t_total (environment steps)")
        ax.set_title(title)
        if name == "losses" and drawn:
            ax.set_yscale("symlog")
        if drawn and twin is None:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def evaluate_policy(policy, structures: Sequence, env_cfg) -> dict[str, Any]:
    """Greedy rollouts of ``policy`` (no noise) on each structure; success = Fmax < fmax within max_steps."""
    from actors.env import RelaxEnv
    from actors.rollout import run_episode

    env = RelaxEnv(env_cfg)
    per = []
    for atoms in structures:
        ep = run_episode(env, policy.act, atoms)
        per.append({"name": ep["name"], "n_atoms": ep["n_atoms"], "converged": ep["converged"], "steps": ep["steps"],
                    "force_calls": ep["force_calls"], "fmax_start": ep["fmax_initial"], "fmax_final": ep["fmax_final"]})
    n = max(len(per), 1)
    return {"structures": len(per), "success_rate": sum(p["converged"] for p in per) / n,
            "mean_steps": float(np.mean([p["steps"] for p in per])) if per else 0.0,
            "median_fmax_final": float(np.median([p["fmax_final"] for p in per])) if per else 0.0,
            "per_structure": per}
