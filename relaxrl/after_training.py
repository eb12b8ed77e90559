"""The evaluation that ends `relaxrl train`: the trained policy ('rl'), the run's untrained
policy ('untrained') and BFGS (the reference minimum) on the held-out structures and on
``run.eval_large`` structures of the large suite (so a regression on larger cells shows), judged as
`relaxrl eval` judges (:func:`relaxrl.evaluate.evaluate`) and written with the same report
writer as ``eval.json`` / ``eval.md`` in the run directory.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms

from actors.suite import large_sample
from learner.policy import load_policy, untrained_policy
from relaxrl.eval_cli import SET_STEPS
from relaxrl.evaluate import POOLED, evaluate, pool_reports
from relaxrl.reports import write_report

AFTER_TRAINING_OPTIMIZERS = ("rl", "untrained", "bfgs")
"""What `relaxrl train` evaluates when it ends: the trained policy, the untrained one, BFGS (the reference minimum)."""


def heldout_sample(heldout: Sequence[Atoms], n: int, max_atoms: int) -> list[Atoms]:
    """The first ``n`` held-out structures with at most ``max_atoms`` atoms (0 = any size): what the
    after-training evaluation (``run.eval_episodes``) and the live evaluation (``run.eval_sample``) take."""
    return [a for a in heldout if not max_atoms or len(a) <= max_atoms][:n]


def large_eval_sample(cfg: Any, n: int) -> list[Atoms]:
    """The first ``n`` large-suite structures (:func:`actors.suite.large_sample`) an evaluation of a run takes
    (``run.eval_large`` after training, ``run.eval_sample_large`` live): only the periodic ones when the run
    relaxes the cell (``env.relax_cell``), as training does."""
    large = large_sample(n, calculator=cfg.env.calculator) if n else []
    return [a for a in large if a.pbc.all()] if cfg.env.relax_cell else large


def evaluate_after_training(cfg: Any, run_dir: str | Path, heldout: Sequence[Atoms],
                            progress: bool = False) -> dict[str, Any]:
    """`relaxrl eval`'s evaluation of a finished run: trained vs untrained policy, and BFGS, on held-out structures
    and, with ``run.eval_large`` > 0, that many structures of the large suite.

    Held-out structures: the first ``run.eval_episodes`` with at most ``run.eval_max_atoms`` atoms
    (0 = any size), budget ``env.max_steps``; large-suite structures (:func:`actors.suite.large_sample`):
    600 steps, as ``relaxrl eval --structures suite-large``. Fmax ``env.fmax`` (eV/Å); calculator
    ``env.calculator`` with ``env.calculator_kwargs``. 'rl' is the run's newest checkpoint; 'untrained' the
    weights the run started from (:func:`learner.policy.untrained_policy`, the learner's own initialisation).
    Judged by `relaxrl eval`'s rule against BFGS's minima, with its default saddle check. With ``env.relax_cell``
    every optimizer relaxes atoms and cell (FrechetCellFilter, as `relaxrl eval --relax-cell`), and only the
    periodic large-suite structures are taken. With large-suite
    structures the report is per set and pooled (:func:`relaxrl.evaluate.pool_reports`). Writes eval.json and
    eval.md in ``run_dir`` (plots in ``run_dir/plots/eval_*.png``) with :func:`relaxrl.reports.write_report`;
    returns the report.
    """
    run_dir = Path(run_dir)
    structures = heldout_sample(heldout, cfg.run.eval_episodes, cfg.run.eval_max_atoms)
    large = large_eval_sample(cfg, cfg.run.eval_large)
    title = "Evaluation after training"
    if not structures and not large:  # nothing to compare: say so in the run directory rather than fail after training
        reason = (f"no held-out structure has at most run.eval_max_atoms = {cfg.run.eval_max_atoms} atoms"
                  if heldout else "the held-out split is empty (curriculum.heldout_fraction)")
        report = {"settings": {"title": title, "n_structures": 0, "skipped": reason}, "optimizers": {},
                  "comparisons": {}, "structures": []}
        (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        (run_dir / "eval.md").write_text(f"# {title}\n\nNothing evaluated: {reason}.\n")
        return report
    policies = {"rl": load_policy(run_dir), "untrained": untrained_policy(cfg)}
    sets = {"held-out": (structures, cfg.env.max_steps), "suite-large": (large, SET_STEPS["suite-large"])}
    reports = {name: evaluate(group, AFTER_TRAINING_OPTIMIZERS, fmax=cfg.env.fmax, steps=steps,
                              calculator=cfg.env.calculator, calculator_kwargs=cfg.env.calculator_kwargs,
                              policies=policies, progress=progress, relax_cell=cfg.env.relax_cell)
               for name, (group, steps) in sets.items() if group}
    report = next(iter(reports.values())) if len(reports) == 1 else pool_reports(reports)
    report["settings"].update(
        title=title, structures="+".join(reports), checkpoint=str(run_dir),
        policy_notes={"rl": "trained, the run's newest checkpoint", "untrained": "the weights the run started from"})
    write_report(report, run_dir, stem="eval", plot_dir=run_dir / "plots")
    return report


def after_training_line(report: dict[str, Any]) -> str:
    """One line for the end of `relaxrl train`: success of the trained vs the untrained policy (and BFGS) per set."""
    st = report["settings"]
    if not st.get("n_structures"):
        return f"no held-out evaluation ({st.get('skipped', 'no structures')})"
    by_set = report.get("by_set") or {st.get("structures", "held-out"): {"n_structures": st["n_structures"],
                                                                           "optimizers": report["optimizers"]}}

    def rate(opts: dict[str, Any], name: str) -> str:
        r = opts.get(name, {}).get("success_rate")
        return "–" if r is None else f"{r:.2f}"

    return "; ".join(f"{name} success trained {rate(e['optimizers'], 'rl')} vs untrained "
                     f"{rate(e['optimizers'], 'untrained')} (BFGS {rate(e['optimizers'], 'bfgs')}) on "
                     f"{e['n_structures']} structures"
                     for name, e in by_set.items() if name != POOLED)
