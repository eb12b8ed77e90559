"""Does more training give a better optimizer? A run's checkpoints against its untrained policy; prints one JSON object.

    python bench/training_curve.py --run RUN_DIR [--checkpoints 250,1000,last | --every 4] [--structures suite,suite-val]
                                   [--optimizers bfgs,bfgsls,goqn] [--out curve.json] [--plot curve.png] [--quick]

Every checkpoint of the run that is asked for (``--checkpoints`` by update, ``last`` the newest, ``--every K`` each K-th kept
checkpoint and the newest; default: all kept ones; a run keeps all with ``learner.keep_checkpoints = 0``)
relaxes the structures as a policy of its own, next to the run's untrained policy (``untrained``: the
weights the run started from) and the classical optimizers, in one :func:`relaxrl.evaluate.evaluate` per
set: the classical runs are made once, so every checkpoint is judged against the same reference minima by
`relaxrl eval`'s rule (eval's saddle check, each set's step budget). Per checkpoint: success of the judged
structures (pooled over the sets) and the mean force calls over the untrained policy's and over each
classical optimizer's on the structures both solved; the same per set. ``--plot`` draws force calls over
the untrained policy's and success against updates. ``--quick`` keeps 3 structures per set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.checkpoint import checkpoint_updates, list_checkpoints  # noqa: E402
from learner.policy import load_policy, untrained_policy  # noqa: E402
from relaxrl.eval_cli import DEFAULT_STEPS, SET_STEPS, set_names, set_structures  # noqa: E402
from relaxrl.evaluate import evaluate, is_classical, parse_optimizers, pool_reports, ratio_on_both_solved  # noqa: E402

UNTRAINED = "untrained"


def parse_checkpoints(text: str) -> list[int | str]:
    """``--checkpoints``: update counts, and ``last`` for the run's newest kept checkpoint."""
    items = [u.strip().lower() for u in text.split(",") if u.strip()]
    bad = [u for u in items if u != "last" and not u.isdigit()]
    if bad:
        raise ValueError(f"--checkpoints: {bad} are not update counts; give integers such as 1000,2000 or 'last'")
    return [u if u == "last" else int(u) for u in items]


def pick_checkpoints(run: Path, asked: list[int | str], every: int) -> list[tuple[int, Path]]:
    """(updates, file) of the checkpoints asked for, oldest first (module docstring)."""
    kept = [(checkpoint_updates(p), p) for p in list_checkpoints(run)]
    if not kept:
        raise SystemExit(f"--run {run}: no checkpoint there (a run directory of `relaxrl train`)")
    updates = sorted({kept[-1][0] if u == "last" else u for u in asked})
    if updates:
        by_updates = dict(kept)
        missing = [u for u in updates if u not in by_updates]
        if missing:
            raise SystemExit(f"--checkpoints: no checkpoint at update(s) {missing}; kept: {sorted(by_updates)}")
        return [(u, by_updates[u]) for u in updates]
    chosen = kept[::every] if every > 1 else kept
    return chosen if chosen[-1] == kept[-1] else chosen + [kept[-1]]


def summarize(structures: list[dict[str, Any]], name: str, classical: list[str]) -> dict[str, Any]:
    """Success and force-call ratios of policy ``name`` on the judged ``structures``."""
    judged = [s for s in structures if s.get("judged")]
    row = {"success": sum(bool(s["runs"][name].get("success")) for s in judged), "judged": len(judged)}
    for other in [UNTRAINED, *classical]:
        both = ratio_on_both_solved(judged, name, other)  # relaxrl eval's comparison
        row[f"vs_{other}"], row[f"n_both_solved_{other}"] = both["ratio"], both["n_both_solved"]
    return row


def plot(curve: dict[str, Any], path: Path) -> None:
    from relaxrl.reports import pyplot  # matplotlib only when a plot is asked for

    plt = pyplot()
    rows = curve["checkpoints"]
    base, judged = curve["untrained"]["success"], curve["untrained"]["judged"]
    xs = [0] + [r["updates"] for r in rows]  # update 0: the untrained policy itself
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, [1.0] + [r["pooled"]["vs_untrained"] for r in rows], marker="o", label="force calls / untrained policy's")
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("learner updates")
    ax.set_ylabel("force calls / untrained's (both solved)")
    twin = ax.twinx()
    success = [base] + [r["pooled"]["success"] for r in rows]
    twin.plot(xs, success, marker="s", color="tab:green", label="success")
    twin.set_ylim(max(0, min(success) - 10), judged + 0.5)  # whole structures, not a zoom onto ±1
    twin.set_ylabel(f"success (of {judged} judged)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    ax.set_title(f"{Path(curve['run']).name}: checkpoints on {curve['structures']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory of `relaxrl train`")
    p.add_argument("--checkpoints", default="",
                   help="updates of the checkpoints to evaluate, comma-separated; 'last' is the run's newest")
    p.add_argument("--every", type=int, default=1, help="each K-th kept checkpoint (and the newest)")
    p.add_argument("--structures", default="suite,suite-val,suite-large")
    p.add_argument("--optimizers", default="bfgs,bfgsls,precon,goqn,fire", help="the classical optimizers")
    p.add_argument("--quick", action="store_true", help="3 structures per set")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--plot", default=None, help="PNG of the curve")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error(f"--every must be >= 1, got {args.every}")
    classical = parse_optimizers(args.optimizers)
    if not all(is_classical(c) for c in classical):
        p.error(f"--optimizers: classical optimizers only (the policies are the checkpoints), got {args.optimizers}")
    try:
        asked = parse_checkpoints(args.checkpoints)
    except ValueError as e:
        p.error(str(e))
    run = Path(args.run)
    chosen = pick_checkpoints(run, asked, args.every)
    policies = {f"ckpt-{u}": load_policy(path) for u, path in chosen}
    cfg = next(iter(policies.values())).config
    policies[UNTRAINED] = untrained_policy(cfg)
    names = list(policies) + classical
    reports = {}
    for set_name in set_names(args.structures):
        group = set_structures(set_name, cfg, 3 if args.quick else 0, cfg.env.calculator, cfg.env.calculator_kwargs)
        reports[set_name] = evaluate(group, names, fmax=cfg.env.fmax, steps=SET_STEPS.get(set_name, DEFAULT_STEPS),
                                     calculator=cfg.env.calculator, calculator_kwargs=cfg.env.calculator_kwargs,
                                     policies=policies, progress=False)
    pooled = pool_reports(reports) if len(reports) > 1 else next(iter(reports.values()))
    curve = {"run": str(run), "structures": args.structures, "classical": classical,
             "untrained": summarize(pooled["structures"], UNTRAINED, classical),
             "checkpoints": [{"updates": u, "pooled": summarize(pooled["structures"], f"ckpt-{u}", classical),
                              "by_set": {s: summarize(r["structures"], f"ckpt-{u}", classical) for s, r in reports.items()}}
                             for u, _ in chosen]}
    text = json.dumps(curve, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        plot(curve, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
